"""Worker output to the daemon's own stdout/stderr (``stdout: daemon``), for containers whose
log collector reads PID 1's output: one line per output line, prefixed with the instance
(``web:0 | listening on :8000``).

This is the one place the daemon sits in a worker's output, and every byte in the pipe is
untrusted, so it is bounded everywhere:

- Reading: a pipe per stream, non-blocking, registered with the loop; each wake-up reads at
  most READ_CHUNK bytes. The loop serves every ready fd once per turn, so a worker writing
  forever at full speed gets one chunk per turn and can starve neither the loop (timers,
  exits, the control socket) nor the other workers; the pipe then fills and the worker blocks
  in write(), as it would writing to a slow terminal.
- Lines: at most MAX_LINE bytes; a longer one is cut into MAX_LINE pieces, each printed as a
  line of its own. A partial line waits for its end, and is printed as it is when the process
  exits (what is still in the pipe then is read, at most DRAIN_MAX bytes).
- Writing: the daemon's stdout may be a pipe nobody reads fast enough (or at all). A writer
  thread per target does the blocking writes from a buffer of at most MAX_PENDING bytes; past
  that, lines are dropped and counted, and one line says how many. The loop never blocks on it.
- A pipe that is never closed (a grandchild kept the write end): the daemon stops reading when
  the instance's process has exited (the tree code kills what it left), and closes its end.

Trade-off, documented in the README: this ties a worker's output to the daemon. If the daemon
dies, a worker writing to the pipe gets SIGPIPE (workers writing to files never do). A re-exec
hands the read ends to the new program (``hand_over`` / ``take_over``), so nothing is lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from collections import deque
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from supervisor.loop import Loop

READ_CHUNK = 64 * 1024
MAX_LINE = 16 * 1024
DRAIN_MAX = 4 * READ_CHUNK
MAX_PENDING = 4 * 1024 * 1024
CLOSE_WAIT = 2.0        # seconds the daemon waits at exit for the writer to flush
_LONG = re.compile(rb"[^\n]{%d}" % MAX_LINE)      # a line too long to print whole


class Sink:
    """A bounded buffer and a writer thread for one of the daemon's fds (1 or 2)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._dropped = 0
        self._broken = False
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"console-{fd}", daemon=True)
        self._thread.start()

    def put(self, data: bytes, lines: int) -> None:
        with self._cond:
            if self._broken:
                return
            if self._size + len(data) > MAX_PENDING:
                self._dropped += lines
                return
            self._chunks.append(data)
            self._size += len(data)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._chunks and not self._dropped and not self._closing:
                    self._cond.wait()
                if not self._chunks and not self._dropped:
                    return
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._size = 0
                if self._dropped:
                    data += (f"pyvisor: {self._dropped} lines of worker output dropped (the "
                             "daemon's output was not read fast enough)\n").encode()
                    self._dropped = 0
            if not self._write(data):
                with self._cond:
                    self._broken = True
                    self._chunks.clear()
                    self._size = 0
                return

    def _write(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                # a non-blocking fd handed to us: wait for room, a little at a time
                threading.Event().wait(0.01)
                continue
            except OSError:
                return False      # EPIPE, EBADF: nobody reads the daemon's output any more
            view = view[n:]
        return True

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(CLOSE_WAIT)


class Pipe:
    """The daemon's read end of one instance's stream."""

    def __init__(self, console: Console, fd: int, prefix: str, target: int) -> None:
        self.console = console
        self.fd = fd
        self.prefix = prefix.encode() + b" | "
        self.target = target
        self._partial = b""
        self.open = True

    def on_readable(self, _mask: int) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as e:
            logger.warning(f"{self.prefix[:-3].decode()}: reading its output: {e}")
            data = b""
        if not data:
            self.close()       # every writer closed its end
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        data = self._partial + data
        end = data.rfind(b"\n") + 1          # complete lines: data[:end]
        body, self._partial = data[:end], data[end:]
        if _LONG.search(body) is None:
            # the common case in C, not per line in Python: a flood of short lines costs
            # the loop a few microseconds per read
            if body:
                out = self.prefix + body[:-1].replace(b"\n", b"\n" + self.prefix) + b"\n"
                self.console.sink(self.target).put(out, body.count(b"\n"))
        else:
            self._cut(body.split(b"\n")[:-1])
        if len(self._partial) >= MAX_LINE:     # a partial line is never held past MAX_LINE
            whole = len(self._partial) // MAX_LINE * MAX_LINE
            head, self._partial = self._partial[:whole], self._partial[whole:]
            self._cut([head])

    def _cut(self, lines: list[bytes]) -> None:
        """Lines of which some are longer than MAX_LINE: each piece a line of its own."""
        out = [self.prefix + line[i:i + MAX_LINE] + b"\n"
               for line in lines for i in range(0, max(len(line), 1), MAX_LINE)]
        if out:
            self.console.sink(self.target).put(b"".join(out), len(out))

    def finish(self) -> None:
        """The process is gone: read what is left (bounded), print a partial line, close."""
        if not self.open:
            return
        left = DRAIN_MAX
        while left > 0:
            try:
                data = os.read(self.fd, min(READ_CHUNK, left))
            except OSError:
                break
            if not data:
                break
            left -= len(data)
            self._feed(data)
        self.close()

    def close(self) -> None:
        if not self.open:
            return
        self.open = False
        if self._partial:
            self.console.sink(self.target).put(self.prefix + self._partial + b"\n", 1)
            self._partial = b""
        self.console.loop.remove(self.fd)
        os.close(self.fd)


class Console:
    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self._sinks: dict[int, Sink] = {}

    def sink(self, target: int) -> Sink:
        s = self._sinks.get(target)
        if s is None:
            s = self._sinks[target] = Sink(target)
        return s

    def open(self, instance: str, target: int) -> tuple[Pipe, int]:
        """A new pipe for one stream of instance, to the daemon's fd ``target``: (the read
        side, watched by the loop; the write end for the child, which the caller closes)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(r, False)
        return self._watch(Pipe(self, r, instance, target)), w

    def _watch(self, pipe: Pipe) -> Pipe:
        self.loop.add_reader(pipe.fd, pipe.on_readable)
        return pipe

    def hand_over(self, pipe: Pipe) -> dict[str, int]:
        """For a re-exec: the read end stays open across execv (what it had of a partial line
        is printed now). Returns the record for take_over."""
        self._partial_out(pipe)
        self.loop.remove(pipe.fd)
        os.set_inheritable(pipe.fd, True)
        pipe.open = False           # no longer ours to close
        return {"fd": pipe.fd, "target": pipe.target}

    def _partial_out(self, pipe: Pipe) -> None:
        if pipe._partial:
            self.sink(pipe.target).put(pipe.prefix + pipe._partial + b"\n", 1)
            pipe._partial = b""

    def take_over(self, instance: str, record: object) -> Pipe | None:
        """The read end a re-exec handed over (from our own state file; still checked to be a
        pipe, so a wrong number never makes us read something else)."""
        if not isinstance(record, dict):
            return None
        fd, target = record.get("fd"), record.get("target")
        if not isinstance(fd, int) or target not in (1, 2) or fd < 3:
            return None
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return None
            os.set_inheritable(fd, False)
            os.set_blocking(fd, False)
        except OSError:
            return None
        assert isinstance(target, int)
        return self._watch(Pipe(self, fd, instance, target))

    def close(self) -> None:
        for s in self._sinks.values():
            with contextlib.suppress(Exception):
                s.close()
