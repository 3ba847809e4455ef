"""Python child processes of the tests: an environment that imports this checkout, and a
reader that waits (bounded) for lines of a child's output."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Protocol

ROOT = Path(__file__).resolve().parents[2]


def python_env(**extra: str) -> dict[str, str]:
    """Environment for Python children: the repo root importable, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYVISOR_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def read_terminal(master: int) -> bytes:
    """All a pty's other side wrote, once it closed (EIO, or end of file)."""
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:     # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class Spawn(Protocol):
    """The procs fixture: start a child with text stdout/stderr pipes (killed and reaped after
    the test)."""

    def __call__(self, args: list[str], *, env: dict[str, str] | None = None
                 ) -> subprocess.Popen[str]: ...


class Lines:
    """Reads a child's text pipe in a thread; expect() waits (bounded) for a matching line."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None, "the child has no pipe to read"
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._t.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def expect(self, needle: str, *, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._q.get(timeout=max(left, 0.0))
            except queue.Empty:
                line = None
                left = -1
            if line is None:
                why = "EOF" if left > 0 else f"{timeout} s passed"
                raise AssertionError(f"{why} before a line with {needle!r}; saw: {self.seen}")
            self.seen.append(line)
            if needle in line:
                return line

    def rest(self, timeout: float = 10.0) -> list[str]:
        """All remaining lines up to EOF (the child must be exiting)."""
        self._t.join(timeout)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                return self.seen
            if line is not None:
                self.seen.append(line)
