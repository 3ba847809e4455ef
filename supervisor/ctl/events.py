"""supervisorctl events [-f] [--json] [TARGETS]

Without -f: the recent events the daemon keeps (state transitions, exits, adoptions,
readiness), one a line, and exit. With -f: those, then every new one as it happens, until
Ctrl-C (exit 0) or the daemon ends the stream. The daemon renders each line (human, or one
JSON object with --json); the client prints them as they come. A client that cannot keep up
is told how many events it lost (on stderr) instead of the daemon buffering without end.
"""

from __future__ import annotations

import json
import sys

import click

from supervisor.control.protocol import (
    EOL,
    ERROR,
    OK,
    BadReply,
    Request,
    decode_reply,
    encode_request,
)
from supervisor.ctl import client
from supervisor.ctl.targets import TARGET

MAX_LINE = 1024 * 1024  # bytes of one streamed line; a longer one is malformed


@click.command("events")
@click.argument("targets", nargs=-1, type=TARGET)
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing events as they happen (Ctrl-C ends).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.pass_obj
def cmd(session: client.Session, targets: tuple[str, ...], follow: bool, as_json: bool) -> None:
    """Show state transitions, exits, adoptions and readiness of TARGETS (default: all)."""
    opts = {"json": as_json, "follow": follow}
    if not follow:
        client.run(session, "events", targets or ("all",), opts)
    shown, _config = session.config_file()
    sock = client.connect(client.socket_path(session), session.connect_timeout, shown)
    try:
        sock.settimeout(None)   # a follow waits as long as it takes (--timeout: not applied)
        sock.sendall(encode_request(Request.make("events", targets or ("all",), opts)))
        follow_stream(sock.recv)
    except KeyboardInterrupt:
        raise SystemExit(OK) from None
    except OSError as e:
        raise client.CtlError(ERROR, f"supervisorctl: event stream failed: {e}") from None
    finally:
        sock.close()


def follow_stream(recv: client.Recv) -> None:
    """Print streamed lines until the final reply (then exit with its code) or EOF."""
    buf = bytearray()
    while True:
        chunk = recv(65536)
        if not chunk:
            raise client.CtlError(ERROR, "supervisorctl: supervisord ended the event stream "
                                         "(it shut down, re-executed or dropped this client)")
        buf += chunk
        while (nl := buf.find(EOL)) >= 0:
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            _print_line(line)
        if len(buf) > MAX_LINE:
            raise _malformed()


def _print_line(line: bytes) -> None:
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        raise _malformed() from None
    if isinstance(doc, dict) and doc.get("stream") is True:
        out, err = doc.get("out"), doc.get("err")
        if isinstance(out, str) and out:
            click.echo(_printable(out), nl=False)
        if isinstance(err, str) and err:
            click.echo(_printable(err), nl=False, err=True)
        sys.stdout.flush()
        return
    try:
        reply = decode_reply(line)
    except BadReply:
        raise _malformed() from None
    client.emit(reply)


def _printable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _malformed() -> client.CtlError:
    return client.CtlError(ERROR, "supervisorctl: supervisord sent a malformed event stream "
                                  "(see its log)")
