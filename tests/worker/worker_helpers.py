"""Helpers for tests/worker (deadline-bounded polls, child Python snippets)."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]


def python_env(**extra: str) -> dict[str, str]:
    """Environment for Python children: the repo root importable, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYVISOR_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_until(
    probe: Callable[[], T], ok: Callable[[T], bool], *, timeout: float = 10.0, what: str = ""
) -> T:
    """Poll probe() until ok(value); AssertionError naming the last value on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {value!r}")
        time.sleep(delay)  # poll interval of a deadline-bounded wait, not a bare sleep
        delay = min(delay * 2, 0.05)


class Lines:
    """Reads a child's text pipe in a thread; expect() waits (bounded) for a matching line."""

    def __init__(self, stream: IO[str]) -> None:
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
