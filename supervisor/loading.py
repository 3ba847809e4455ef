"""A reload's config load, on a thread of its own: the loop goes on meanwhile.

A config of 10,000 workers of one instance each (what --convert makes of a supervisord.conf of
10,000 [program:x] sections) takes 3-4 s to load here: YAML, validation, the whole-config
checks. On the loop, those were seconds in which no client was answered, no exit reaped, no
crashed worker restarted and no systemd watchdog ping sent. On this thread the load holds the
GIL in slices (sys.getswitchinterval, 5 ms), and the loop runs between them.

The load only reads (the file, the filesystem's state for its checks, the user database); what
it returns is applied on the loop, so nothing the loop holds is touched from here. One load at a
time: requests that come while one runs are served by the next load, started once the running
one is applied (the file may have changed after the running load read it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from loguru import logger

from supervisor.config import Config
from supervisor.control.protocol import FAILED, Reply
from supervisor.loop import Loop

Loaded = Config | BaseException       # the new config, or what load_config raised
Then = Callable[[Loaded, list[Callable[..., None]]], None]


class ConfigLoads:
    """``request(done)``: load the config and hand ``(result, the dones waiting for it)`` to
    ``then`` on the loop."""

    def __init__(self, loop: Loop, load: Callable[[], Config], then: Then) -> None:
        self._loop = loop
        self._load = load
        self._then = then
        self._waiting: list[Callable[..., None]] = []
        self._current: list[Callable[..., None]] = []   # those the running load is for
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def request(self, done: Callable[..., None]) -> None:
        self._waiting.append(done)
        if not self._running:
            self._start()

    def _apply(self, loaded: Loaded, waiting: list[Callable[..., None]]) -> None:
        """then(), in a reader callback of the loop: an exception it raises (a bug in applying
        the config) would end the daemon there, where on the control socket's handler it cost
        the reply only; it is logged, and the requests still waiting are told."""
        try:
            self._then(loaded, waiting)
        except Exception as e:  # noqa: BLE001 -- a bug in a reload must not take the daemon down
            logger.opt(exception=True).error(f"reload failed while applied: {type(e).__name__}: "
                                             f"{e}")
            for done in waiting:
                done(Reply(FAILED, err=f"reload failed while applied: {type(e).__name__}: {e} "
                                       "(a bug; see the daemon log)\n"))

    def abandon(self, reply: Reply) -> None:
        """Answer every request waiting for a load (the running one's, the next one's) with
        reply: the daemon re-executes before it would apply them, and their clients got EOF."""
        for done in [*self._current, *self._waiting]:
            done(reply)
        self._waiting = []

    def _start(self) -> None:
        waiting, self._waiting = self._waiting, []
        self._current = waiting
        result: list[Loaded] = []

        def work() -> None:
            try:
                result.append(self._load())
            except BaseException as e:      # reported by then(), on the loop
                result.append(e)

        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

        def on_thread() -> None:
            try:
                work()
            finally:
                os.write(w, b"\0")

        def finished(_mask: int) -> None:
            self._loop.remove(r)
            os.close(r)
            os.close(w)
            self._running = False
            try:
                self._apply(result[0], waiting)
            finally:
                if self._waiting:
                    self._start()

        self._running = True
        try:
            threading.Thread(target=on_thread, name="config-load", daemon=True).start()
        except RuntimeError:                # no thread to be had: load here, as before
            os.close(r)
            os.close(w)
            work()
            self._running = False
            self._apply(result[0], waiting)
            return
        self._loop.add_reader(r, finished)
