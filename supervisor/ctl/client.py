"""Talking to supervisord: find its socket from the config path, send one request, read one reply.

The locator (supervisor.paths) maps a config file's real path to the daemon's socket, so the
client never parses YAML. Failures the client sees itself become a CtlError carrying its exit
code and one line for stderr; everything else (what to print, which code) comes from the daemon.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys
import time

from supervisor import paths
from supervisor.control.wire import (
    CONNECT_TIMEOUT,
    EOL,
    ERROR,
    INTERRUPTED,
    MAX_REPLY,
    NOT_RUNNING,
    TIMEOUT,
    USAGE,
    BadReply,
    Reply,
    decode_reply,
    encode_request,
    request_doc,
)
from supervisor.ctl.out import echo

TYPE_CHECKING = False
if TYPE_CHECKING:   # typing, collections.abc and socket stay out of supervisorctl's start-up
    from collections.abc import Callable, Mapping, Sequence
    from typing import IO, Any, NoReturn

    Recv = Callable[[int], bytes]  # socket.recv

DEFAULT_CONFIG = "supervisord.yaml"
_RECV = 1 << 20     # bytes asked for per recv: a megabyte of status is read in a few calls


class CtlError(Exception):
    """A failure seen by the client: ``message`` is printed as is, the process exits ``code``.
    Not a click exception, so that the fast path runs without click; the click CLI turns it
    into one (supervisor.ctl.cli)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = int(code)

    def show(self, file: IO[Any] | None = None) -> None:
        echo(self.message, err=True)


class Session:
    """What the group options decided; every verb gets it as click's ``obj``. (A plain class:
    importing dataclasses is a third of supervisorctl's start.)"""

    def __init__(self, config: str | None, timeout: float | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.config = config
        self.timeout = timeout
        self.connect_timeout = connect_timeout

    def config_file(self) -> tuple[str, str]:
        """(the config as the user named it, its absolute path). Without -c, $PYVISOR_CONFIG
        or ./supervisord.yaml: the config of the one daemon of this user that runs, if there
        is exactly one (said on stderr, once). CtlError if there is none."""
        if self.config:
            return self.config, os.path.abspath(self.config)
        if os.path.isfile(DEFAULT_CONFIG):
            return DEFAULT_CONFIG, os.path.abspath(DEFAULT_CONFIG)
        running = paths.running_configs()
        if len(running) == 1:
            self.config = running[0]
            echo(f"supervisorctl: using {running[0]}, the one supervisord running "
                       "(-c FILE chooses)", err=True)
            return self.config, self.config
        how = (f"give -c FILE, set {paths.ENV_CONFIG} (e.g. in .venv/bin/activate), or run it "
               f"where ./{DEFAULT_CONFIG} is")
        if running:
            listed = "".join(f"\n  {c}" for c in running[:20])
            more = f"\n  ... and {len(running) - 20} more" if len(running) > 20 else ""
            raise CtlError(USAGE, f"supervisorctl: {len(running)} supervisords are running; "
                                  f"{how}:{listed}{more}")
        raise CtlError(USAGE, f"supervisorctl: no config file and no supervisord running: {how}")


def command(name: str) -> str:
    """supervisorctl or supervisord as a hint must spell it to work when pasted: beside the
    supervisorctl that runs, when it was run by its path (.venv/bin/supervisorctl)."""
    me = sys.argv[0] if sys.argv else ""
    if os.sep in me and os.path.basename(me) == "supervisorctl":
        return os.path.join(os.path.dirname(me), name)
    return name


def not_running(config: str) -> CtlError:
    if not os.path.exists(config):     # a typo in -c, not a daemon that is down
        return CtlError(NOT_RUNNING, f"supervisorctl: no such config file: {config} "
                                     "(and so no supervisord running it)")
    if os.path.isdir(config):
        return CtlError(NOT_RUNNING, f"supervisorctl: {config} is a directory, not a config "
                                     "file (and so no supervisord runs it)")
    if not os.access(config, os.R_OK):
        return CtlError(NOT_RUNNING, f"supervisorctl: cannot read the config file {config} "
                                     "(permission denied); no supervisord of yours runs it")
    return CtlError(
        NOT_RUNNING,
        f"supervisorctl: no supervisord is running for {config} "
        f"(start it with: {command('supervisord')} -c {config})",
    )


def socket_path(session: Session) -> str:
    """The daemon's socket for the session's config; CtlError(NOT_RUNNING) without a locator."""
    shown, config = session.config_file()
    try:
        doc = paths.read_locator(config)
    except OSError as e:    # the runtime directory or the locator is not ours
        raise CtlError(ERROR, f"supervisorctl: cannot trust the locator of {shown}: {e}") from None
    sock = doc.get("socket") if doc is not None else None
    if not isinstance(sock, str) or not sock:
        raise not_running(shown)
    return os.path.join(os.path.dirname(config), sock)  # an absolute sock wins in join


def request(
    session: Session,
    cmd: str,
    targets: Sequence[str] = (),
    opts: Mapping[str, Any] | None = None,
) -> Reply:
    """Send {"cmd", "targets", "opts"} to the session's daemon and return its reply."""
    shown, _config = session.config_file()
    path = socket_path(session)
    payload = request_doc(cmd, targets, opts)
    try:
        return exchange(path, payload, session.timeout, session.connect_timeout, shown)
    except KeyboardInterrupt:
        raise CtlError(
            INTERRUPTED,
            "supervisorctl: interrupted; supervisord carries on with the request "
            f"(see: {command('supervisorctl')} -c {shown} status)",
        ) from None


def exchange(
    path: str,
    payload: Mapping[str, Any],
    timeout: float | None,
    connect_timeout: float,
    shown_config: str,
) -> Reply:
    """One round trip on the socket at path. Raises CtlError for every failure."""
    sock = connect(path, connect_timeout, shown_config)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        data = encode_request(payload)
        try:
            sock.settimeout(timeout)
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon refused us early; its reply is already in our buffer
        except TimeoutError:
            raise _timeout(timeout, shown_config) from None
        return _read_reply(sock, deadline, timeout, shown_config)
    finally:
        sock.close()


def connect(path: str, connect_timeout: float, shown_config: str) -> _socket.socket:
    """A connection to the daemon at path, its peer checked. Raises CtlError. (The socket of
    _socket, which socket.socket subclasses only to add makefile, dup and enums: importing
    socket imports enum and selectors.)"""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(connect_timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise not_running(shown_config) from None
        except TimeoutError:
            raise CtlError(
                TIMEOUT,
                f"supervisorctl: supervisord did not accept a connection on {path} within "
                f"{connect_timeout:g} s (is it hung?)",
            ) from None
        except OSError as e:
            raise _os_error(path, e) from None
        _check_peer(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


def _check_peer(sock: _socket.socket, path: str) -> None:
    """Talk only to a daemon of root or of our own uid: a process of another user that put
    its own socket at the path (or behind a swapped directory) must not be believed."""
    try:
        cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # struct ucred
        uid = int.from_bytes(cred[4:8], sys.byteorder, signed=True)  # pid, uid, gid: C ints
    except OSError as e:
        raise CtlError(ERROR, f"supervisorctl: cannot tell who serves {path}: {e}") from None
    if uid not in (0, os.geteuid()):
        raise CtlError(ERROR, f"supervisorctl: {path} is served by uid {uid}, neither root nor "
                              "you; refusing to talk to it (someone else's socket?)")


def _read_reply(
    sock: _socket.socket, deadline: float | None, timeout: float | None, shown: str
) -> Reply:
    buf = bytearray()
    end = -1                # where the reply's EOL is, once read
    while len(buf) <= MAX_REPLY:
        if deadline is not None:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            chunk = sock.recv(_RECV)
        except TimeoutError:
            raise _timeout(timeout, shown) from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        start = len(buf)
        buf += chunk
        end = buf.find(EOL, start)      # only the new bytes: a big reply is not searched again
        if end >= 0:
            break
    line = bytes(memoryview(buf)[:end]) if end >= 0 else bytes(buf)
    if not line:
        raise CtlError(
            ERROR, "supervisorctl: supervisord closed the connection without a reply (see its log)"
        )
    try:
        return decode_reply(line)
    except BadReply:
        raise CtlError(
            ERROR, "supervisorctl: supervisord sent a malformed reply (see its log)"
        ) from None


def _timeout(timeout: float | None, shown: str) -> CtlError:
    return CtlError(
        TIMEOUT,
        f"supervisorctl: no reply from supervisord within {timeout:g} s; the request may still "
        f"complete (see: {command('supervisorctl')} -c {shown} status)",
    )


def _os_error(path: str, e: OSError) -> CtlError:
    if e.errno in (errno.EACCES, errno.EPERM):
        return CtlError(
            ERROR,
            f"supervisorctl: permission denied on {path} (run as supervisord's user or root, "
            "or as a member of its socket group)",
        )
    return CtlError(ERROR, f"supervisorctl: cannot connect to supervisord at {path}: {e.strerror}")


def print_reply(reply: Reply) -> None:
    """Print the daemon's text verbatim: out to stdout, err to stderr."""
    if reply.out:
        echo(reply.out, nl=False)
    if reply.err:
        echo(reply.err, nl=False, err=True)
    sys.stdout.flush()


def emit(reply: Reply) -> NoReturn:
    """Print the reply and exit with its code."""
    print_reply(reply)
    raise SystemExit(reply.code)


def run(
    session: Session,
    cmd: str,
    targets: Sequence[str] = (),
    opts: Mapping[str, Any] | None = None,
) -> NoReturn:
    """What most verbs do: one request, print the reply, exit with its code."""
    emit(request(session, cmd, targets, opts))
