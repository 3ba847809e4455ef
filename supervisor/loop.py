"""The daemon's event loop: one selector, a timer heap, the signal wakeup fd. No tick.

Every registered file descriptor carries a callback ``fn(mask)``; timers are ``call_at`` /
``call_later`` handles that can be cancelled. ``run_once`` sleeps until the nearest timer or an
fd event, so an idle daemon makes no system calls at all. Signals arrive through
``signal.set_wakeup_fd`` and are dispatched from the loop (never from inside a Python signal
handler), so handlers may do anything.

The loop measures its own lag without a tick: how late each timer fires (the time between its
deadline and the turn that runs it), in a fixed histogram (``lag``). A loop that a callback
stalls shows it in the next timer's lateness; an idle loop measures nothing and costs nothing.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

FdCallback = Callable[[int], None]
MAX_SLEEP = 86400.0         # seconds the loop sleeps at most before it looks at its timers again
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)   # seconds (upper bounds)


class Lag:
    """How late timers fired: a count per bucket (``counts[i]``: at most LAG_BUCKETS[i] and
    more than the bucket before; the last one is past every bound), their sum and the last."""

    __slots__ = ("counts", "sum", "last", "max")

    def __init__(self) -> None:
        self.counts = [0] * (len(LAG_BUCKETS) + 1)
        self.sum = 0.0
        self.last = 0.0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LAG_BUCKETS, seconds)] += 1
        self.sum += seconds
        self.last = seconds
        if seconds > self.max:
            self.max = seconds


@dataclass(order=True, slots=True)
class Timer:
    when: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self.stopped = False
        self.lag = Lag()
        self.turns = 0          # run_once calls: /livez shows the loop turns

    # -- file descriptors -------------------------------------------------------------------
    def add_reader(self, fd: int, fn: FdCallback, events: int = selectors.EVENT_READ) -> None:
        self.selector.register(fd, events, fn)

    def modify(self, fd: int, events: int, fn: FdCallback) -> None:
        self.selector.modify(fd, events, fn)

    def remove(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(fd)

    # -- timers -------------------------------------------------------------------------------
    def pause_reader(self, fd: int, fn: FdCallback, seconds: float) -> Timer:
        """Stop watching fd, and watch it again with fn after seconds unless the Timer is
        cancelled first: a level-triggered listener that cannot accept (out of fds or
        memory) would otherwise spin the loop."""
        self.remove(fd)
        return self.call_later(seconds, lambda: self.add_reader(fd, fn))

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        t = Timer(when, next(self._seq), fn)
        heapq.heappush(self._timers, t)
        return t

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        return self.call_at(self.clock() + max(0.0, delay), fn)

    # -- signals ------------------------------------------------------------------------------
    def add_signal_handler(self, signum: int, fn: Callable[[int], None]) -> None:
        """Run fn(signum) from the loop when signum arrives."""
        if self._wake_r is None:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
            self.add_reader(self._wake_r, self._on_wakeup)
        self._signal_handlers[signum] = fn
        # A Python-level handler that does nothing: the C handler writes the signal number to
        # the wakeup fd, and the loop dispatches it.
        signal.signal(signum, lambda s, f: None)

    def _on_wakeup(self, _mask: int) -> None:
        assert self._wake_r is not None
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            return
        for signum in data:
            fn = self._signal_handlers.get(signum)
            if fn is not None:
                fn(signum)

    # -- running ------------------------------------------------------------------------------
    def _next_timeout(self) -> float | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        # at most a day: epoll takes a timeout in ms that fits an int (about 24.8 days)
        return min(max(0.0, self._timers[0].when - self.clock()), MAX_SLEEP)

    def run_once(self) -> None:
        timeout = self._next_timeout()
        for key, mask in self.selector.select(timeout):
            key.data(mask)
        now = self.clock()
        self.turns += 1
        while self._timers and (self._timers[0].cancelled or self._timers[0].when <= now):
            t = heapq.heappop(self._timers)
            if not t.cancelled:
                self.lag.observe(now - t.when)
                t.fn()

    def run(self) -> None:
        while not self.stopped:
            self.run_once()

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        if self._wake_r is not None:
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            assert self._wake_w is not None
            os.close(self._wake_w)
            self._wake_r = self._wake_w = None
        self.selector.close()
