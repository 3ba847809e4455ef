"""supervisorctl logs [-f] [-n LINES] [TARGETS]

The output of several instances interleaved, each line prefixed with its instance, as honcho
and PM2 show it (``web:0 | listening``; stderr lines ``web:0 ! ...``). The daemon only names
the files; the client reads them as tail does (never through a planted link, never a FIFO),
and everything is bounded: at most MAX_FILES files, the last LINES lines of each first, then
at most one READ_CHUNK per file per poll (so a flooding worker cannot hide the others), lines
cut at MAX_LINE, a partial line printed once it ends (or is MAX_LINE long). Rotation and
truncation are followed as tail -f follows them. Ctrl-C ends it (exit 0).
"""

from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO

import click

from supervisor.control.protocol import ERROR, OK
from supervisor.ctl import client
from supervisor.ctl.tail import POLL_INTERVAL, _open, last_lines
from supervisor.ctl.targets import FOLLOW, TARGET, lines_option

MAX_FILES = 256
READ_CHUNK = 256 * 1024
MAX_LINE = 16 * 1024


class _Stream:
    """One file being followed, with the partial line it ended in."""

    def __init__(self, instance: str, stream: str, path: str, width: int) -> None:
        mark = "|" if stream == "stdout" else "!"
        self.prefix = f"{instance:<{width}} {mark} ".encode()
        self.path = path
        self.f: BinaryIO | None = None
        self.partial = b""

    def lines(self, data: bytes, out: BinaryIO) -> None:
        parts = (self.partial + data).split(b"\n")
        self.partial = parts.pop()
        while len(self.partial) >= MAX_LINE:
            parts.append(self.partial[:MAX_LINE])
            self.partial = self.partial[MAX_LINE:]
        for line in parts:
            for i in range(0, max(len(line), 1), MAX_LINE):
                out.write(self.prefix + line[i:i + MAX_LINE] + b"\n")

    def poll(self, out: BinaryIO) -> None:
        if self.f is None:
            self.f = _open(self.path)
            if self.f is None:
                return
        chunk = self.f.read(READ_CHUNK)
        if chunk:
            self.lines(chunk, out)
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return              # rotated away: keep the old file until a new one appears
        if st.st_ino != os.fstat(self.f.fileno()).st_ino:
            self.f.close()
            self.f = None       # rotated: the new file from its start at the next poll
        elif st.st_size < self.f.tell():
            self.f.seek(0)      # truncated in place

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


@click.command("logs")
@click.argument("targets", nargs=-1, type=TARGET)
@FOLLOW
@lines_option("Print the last LINES lines of each log first.")
@click.pass_obj
def cmd(session: client.Session, targets: tuple[str, ...], follow: bool, lines: int) -> None:
    """Print the output of TARGETS (default: all), each line after its instance."""
    reply = client.request(session, "logs", targets or ("all",))
    if reply.code != OK:
        client.emit(reply)
    data = reply.data if isinstance(reply.data, dict) else {}
    files = [f for f in data.get("files") or [] if isinstance(f, list) and len(f) == 3
             and all(isinstance(x, str) for x in f)]
    if not files:
        raise client.CtlError(ERROR, "supervisorctl: supervisord names no log files for "
                              f"{' '.join(targets) or 'all'}")
    total = data.get("total")
    total = total if isinstance(total, int) and total > len(files) else len(files)
    if total > MAX_FILES or len(files) > MAX_FILES:
        files = files[:MAX_FILES]
        click.echo(f"supervisorctl: showing the first {len(files)} of {total} logs; name "
                   "fewer targets", err=True)
    width = max(len(inst) for inst, _s, _p in files)
    streams = [_Stream(inst, stream, path, width) for inst, stream, path in files]
    out = sys.stdout.buffer
    try:
        for s in streams:
            s.f = _open(s.path)
            if s.f is not None:
                s.lines(last_lines(s.f, lines), out)
        out.flush()
        while follow:
            for s in streams:
                s.poll(out)
            out.flush()
            time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        pass
    except OSError as e:
        raise client.CtlError(ERROR, f"supervisorctl: cannot read {e.filename or 'a log'}: "
                              f"{e.strerror}") from None
    finally:
        for s in streams:
            s.close()
    raise SystemExit(OK)
