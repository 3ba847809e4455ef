"""supervisorctl tail TARGET [-f] [--stderr] [-n LINES]

The daemon only names the log files ({"stdout": path, "stderr": path} in the reply's data); the
client reads them itself, so a follow costs the daemon nothing. Following polls the file every
0.2 s and survives rotation (inode changes: finish the old file, reopen the new one from its
start) and truncation (size shrinks: start again from the beginning). Ctrl-C ends it (exit 0).
"""

from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO

import click

from supervisor import safefs
from supervisor.control.protocol import ERROR, OK
from supervisor.ctl import client
from supervisor.ctl.targets import TARGET

POLL_INTERVAL = 0.2
_CHUNK = 8192
MAX_LOOK_BACK = 1 << 20     # bytes read back at most for the last lines (a huge file, no newlines)


@click.command("tail")
@click.argument("target", type=TARGET)
@click.option("-f", "--follow", is_flag=True, help="Keep printing what is appended (Ctrl-C ends).")
@click.option("--stderr", "use_stderr", is_flag=True, help="Show the stderr log, not stdout.")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Print the last LINES lines first.",
)
@click.pass_obj
def cmd(session: client.Session, target: str, follow: bool, use_stderr: bool, lines: int) -> None:
    """Print the end of TARGET's output log (one instance, e.g. web:0)."""
    stream = "stderr" if use_stderr else "stdout"
    reply = client.request(session, "tail", [target], {"stream": stream})
    if reply.code != OK:
        client.emit(reply)
    client.print_reply(reply)
    path = reply.data.get(stream) if isinstance(reply.data, dict) else None
    if not isinstance(path, str) or not path:
        raise client.CtlError(
            ERROR, f"supervisorctl: {target}: supervisord names no {stream} log file for it"
        )
    out = sys.stdout.buffer
    try:
        tail_file(path, lines, follow, out)
    except KeyboardInterrupt:
        pass
    except OSError as e:
        raise client.CtlError(ERROR, f"supervisorctl: cannot read {path}: {e.strerror}") from None
    raise SystemExit(OK)


def last_lines(f: BinaryIO, n: int) -> bytes:
    """The last n lines of f (up to its current end); leaves f at that end."""
    end = f.seek(0, os.SEEK_END)
    if n == 0:
        return b""
    pos, chunks, newlines = end, [], 0
    while pos > 0 and end - pos < MAX_LOOK_BACK:
        step = min(_CHUNK, pos)
        pos -= step
        f.seek(pos)
        chunk = f.read(step)
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
        if newlines > n:
            break
    data = b"".join(reversed(chunks))
    f.seek(end)
    return b"".join(data.splitlines(keepends=True)[-n:])


def tail_file(path: str, n: int, follow: bool, out: BinaryIO) -> None:
    f: BinaryIO | None = _open(path)
    if f is not None:
        out.write(last_lines(f, n))
        out.flush()
    if not follow:
        if f is not None:
            f.close()
        return
    try:
        while True:
            if f is None:
                f = _open(path)  # not created yet, or rotated away and not recreated yet
            if f is not None:
                f = _follow_step(path, f, out)
            time.sleep(POLL_INTERVAL)
    finally:
        if f is not None:
            f.close()


def _follow_step(path: str, f: BinaryIO, out: BinaryIO) -> BinaryIO | None:
    _copy(f, out)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f  # rotated away; keep reading the old file until a new one appears
    if st.st_ino != os.fstat(f.fileno()).st_ino:
        _copy(f, out)  # the last words written to the old file
        f.close()
        new = _open(path)
        if new is not None:
            _copy(new, out)
        return new
    if st.st_size < f.tell():
        f.seek(0)  # truncated
        _copy(f, out)
    return f


def _open(path: str) -> BinaryIO | None:
    """The log file, opened as safely as the daemon opens it (supervisorctl often runs as
    root, and the log directory may be the worker's): never through a planted link, never a
    FIFO (which would hang) or a device."""
    try:
        dfd = safefs.open_dir(os.path.dirname(os.path.abspath(path)))
        try:
            fd = safefs.open_existing(dfd, os.path.basename(path), path)
        finally:
            os.close(dfd)
    except FileNotFoundError:
        return None
    return os.fdopen(fd, "rb")  # closed by the follow loop


def _copy(f: BinaryIO, out: BinaryIO) -> None:
    while chunk := f.read(65536):
        out.write(chunk)
    out.flush()
