"""The one deadline-bounded poll of the test suite.

Every test that waits for something to happen waits through ``wait_until``: it polls, never
sleeps a fixed time, and on timeout fails with what it was waiting for and the last value it
saw. Other waits (``DaemonProcess.wait_state``, ``Container.wait_for``, ...) are thin wrappers
around it with no loop of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

POLL_S = 0.02        # the default longest pause between two polls
FIRST_POLL_S = 0.001  # the first pause; it doubles up to the longest


class Abort(Exception):
    """Raised by a wait_until predicate: stop waiting now (e.g. the process died)."""


class WaitTimeout(AssertionError):
    """The deadline passed; ``last`` is the last value seen (a value or an exception)."""

    def __init__(self, message: str, last: object) -> None:
        super().__init__(message)
        self.last = last


@overload
def wait_until(pred: Callable[[], T | None], timeout: float, what: str, *,
               interval: float = ..., show: Callable[[], str] | None = ...) -> T: ...


@overload
def wait_until(pred: Callable[[], T], timeout: float, what: str, *, ok: Callable[[T], bool],
               interval: float = ..., show: Callable[[], str] | None = ...) -> T: ...


def wait_until(pred: Callable[[], object], timeout: float, what: str, *,
               ok: Callable[[Any], bool] = bool, interval: float = POLL_S,
               show: Callable[[], str] | None = None) -> object:
    """Call ``pred`` until ``ok(value)`` (default: the value is truthy) and return that value,
    or fail once ``timeout`` seconds have passed: WaitTimeout (an AssertionError) naming
    ``what``, the last value seen and ``show()`` (extra context, e.g. a log).

    An exception from ``pred`` counts as a value, except AssertionError and Abort, which end
    the wait at once. The pause between polls starts at 1 ms and doubles up to ``interval``:
    a condition that is nearly met is seen at once, a slow one is not polled in a busy loop."""
    deadline = time.monotonic() + timeout
    pause = min(FIRST_POLL_S, interval)
    last: object = None
    while True:
        try:
            value = pred()
        except (AssertionError, Abort):
            raise
        except Exception as e:  # noqa: BLE001 - the last error is the last value seen
            last = e
        else:
            if ok(value):
                return value
            last = value
        if time.monotonic() >= deadline:
            extra = f"\n{show()}" if show is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}; "
                              f"last value seen: {last!r}{extra}", last)
        time.sleep(pause)
        pause = min(pause * 2, interval)
