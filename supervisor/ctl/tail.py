"""supervisorctl tail TARGET [-f] [--stdout | --stderr] [-n LINES]

Both streams by default (a crashed program's error is on stderr), each under tail(1)'s
``==> FILE <==`` header when they are two files. The daemon only names the log files
({"stdout": path, "stderr": path} in the reply's data); the client reads them itself, so a
follow costs the daemon nothing. Following polls the files every 0.2 s and survives rotation
(inode changes: finish the old file, reopen the new one from its start) and truncation (size
shrinks: start again from the beginning). Ctrl-C ends it (exit 0). No click here: the entry
point's fast path runs ``tail TARGET`` without it; the click command is tail_cmd.
"""

from __future__ import annotations

import os
import sys
import time

from supervisor import safefs
from supervisor.control.wire import ERROR, NOT_RUNNING, OK, Reply
from supervisor.ctl import client
from supervisor.ctl.out import echo

TYPE_CHECKING = False
if TYPE_CHECKING:   # typing stays out of supervisorctl's start-up
    from typing import BinaryIO, NoReturn, Protocol

    class _Out(Protocol):
        def write(self, data: bytes, /) -> int: ...
        def flush(self) -> None: ...

POLL_INTERVAL = 0.2
_CHUNK = 8192
MAX_LOOK_BACK = 1 << 20     # bytes read back at most for the last lines (a huge file, no newlines)


def run(session: client.Session, target: str, follow: bool, only: str | None,
        lines: int) -> NoReturn:
    """supervisorctl tail: the click command (tail_cmd) and the fast path both call this."""
    stream = only or "both"
    try:
        reply = client.request(session, "tail", [target], {"stream": stream})
    except client.CtlError as e:
        if e.exit_code != NOT_RUNNING:
            raise
        reply = _from_config(session, target, e)
    if reply.code != OK:
        client.emit(reply)
    client.print_reply(reply)
    data = reply.data if isinstance(reply.data, dict) else {}
    wanted = [only] if only else ["stdout", "stderr"]
    found = [data.get(s) for s in wanted]
    paths = list(dict.fromkeys(p for p in found if isinstance(p, str) and p))
    if not paths:
        where = data.get("elsewhere")
        why = f" ({where})" if isinstance(where, str) and where else ""
        raise client.CtlError(
            ERROR,
            f"supervisorctl: {target}: supervisord names no {stream.replace('both', 'output')} "
            f"log file for it{why}",
        )
    out = sys.stdout.buffer
    try:
        tail_files(paths, lines, follow, out)
    except KeyboardInterrupt:
        pass
    except OSError as e:
        raise client.CtlError(ERROR, f"supervisorctl: cannot read {e.filename or 'a log'}: "
                              f"{e.strerror}") from None
    raise SystemExit(OK)


def _from_config(session: client.Session, target: str, down: client.CtlError) -> Reply:
    """No daemon: the log files named in the config (said on stderr), or the error."""
    _shown, config = session.config_file()
    if not os.path.isfile(config):
        raise down
    from supervisor.ctl import offline  # the slow path: it loads the config

    found = offline.log_paths(config, target)
    if isinstance(found, str):
        raise client.CtlError(down.exit_code, f"{down.message}\nsupervisorctl: {found}")
    echo(f"supervisorctl: supervisord is not running; reading {target}'s log files as "
               f"{config} names them", err=True)
    return Reply(OK, data={"stdout": found[0], "stderr": found[1]})


class _Headed:
    """Output that puts tail(1)'s ``==> FILE <==`` header before a file's bytes when several
    files are shown (a blank line before every header but the first)."""

    def __init__(self, out: BinaryIO, many: bool) -> None:
        self.out = out
        self.many = many
        self.current: str | None = None

    def switch(self, path: str) -> None:
        if self.many and self.current != path:
            blank = b"" if self.current is None else b"\n"
            self.out.write(blank + f"==> {path} <==\n".encode(errors="replace"))
        self.current = path

    def to(self, path: str) -> _Out:
        return _Lazy(self, path)


class _Lazy:
    """Writes to one file's part of the output: its header first when the output switches to
    it (and only when there is something to show)."""

    def __init__(self, headed: _Headed, path: str) -> None:
        self.headed = headed
        self.path = path

    def write(self, data: bytes, /) -> int:
        if data:
            self.headed.switch(self.path)
        return self.headed.out.write(data)

    def flush(self) -> None:
        self.headed.out.flush()


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
    tail_files([path], n, follow, out)


def tail_files(paths: list[str], n: int, follow: bool, out: BinaryIO) -> None:
    """The last n lines of each file, then (follow) what is appended to any of them."""
    headed = _Headed(out, len(paths) > 1)
    files: dict[str, BinaryIO | None] = {}
    try:
        for path in paths:
            f = files[path] = _open(path)
            headed.switch(path)     # the header even of an empty file, as tail(1) does
            if f is not None:
                headed.to(path).write(last_lines(f, n))
        out.flush()
        if not follow:
            return
        while True:
            for path in paths:
                f = files[path]
                if f is None:
                    f = _open(path)  # not created yet, or rotated away and not recreated yet
                if f is not None:
                    f = _follow_step(path, f, headed.to(path))
                files[path] = f
            time.sleep(POLL_INTERVAL)
    finally:
        for f in files.values():
            if f is not None:
                f.close()


def _follow_step(path: str, f: BinaryIO, out: _Out) -> BinaryIO | None:
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


def _copy(f: BinaryIO, out: _Out) -> None:
    while chunk := f.read(65536):
        out.write(chunk)
    out.flush()
