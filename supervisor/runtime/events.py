"""The runtime's event bus: what happened to instances, for ``supervisorctl events`` and the
HTTP event stream.

The runtime publishes from one place (``Runtime.dispatch``, after the core's step): every
state transition ("state"), every exit of a process ("exit"), every adoption ("adopted") and
every start that became RUNNING ("ready", with how: reported by the worker or after
start_seconds). Each event gets the next ``seq`` (1, 2, ...: never reused while the daemon
lives) and the wall-clock time. seq starts at 1 again in the next daemon process (after a
restart, a crash or a re-exec): the bus's ``epoch`` (the microsecond it was made, wall clock)
tells one daemon's seqs from another's, and the HTTP event stream's ids carry it.

Rules:
  * The bus keeps the last ``keep`` events in a ring (bounded memory whatever the rate), so a
    new subscriber can be given the recent past (``recent``) before the live ones.
  * Subscribers are called synchronously, in subscription order, on the loop's thread, and
    must be cheap and never block (the control server only appends to a bounded buffer). One
    that raises is logged and unsubscribed: a broken subscriber cannot break dispatch.
  * Subscribing and unsubscribing from inside a callback is allowed (it takes effect for the
    next event).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from loguru import logger

from supervisor import core

KINDS = ("state", "exit", "adopted", "ready")
KEEP = 1024  # recent events kept for new subscribers


class RuntimeEvent(NamedTuple):
    """Immutable, shared by every subscriber. A named tuple: made three times per instance
    in a stop (a frozen dataclass costs three times as much to make)."""

    seq: int
    time: float               # wall clock (time.time())
    instance: str             # "web:0"
    kind: str                 # one of KINDS
    from_state: str | None = None
    to_state: str | None = None
    pid: int | None = None
    reason: str | None = None  # the transition's reason, or the exit's description

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": round(self.time, 6), "instance": self.instance,
                "kind": self.kind, "from": self.from_state, "to": self.to_state,
                "pid": self.pid, "reason": self.reason}

    def describe(self) -> str:
        """One human line (without the time): ``web:0 state STARTING -> RUNNING (...)``."""
        head = f"{self.instance} {self.kind}"
        if self.kind == "state":
            head += f" {self.from_state} -> {self.to_state}"
        elif self.to_state:
            head += f" ({self.to_state})"
        parts = [head]
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.reason:
            parts.append(self.reason)
        return ", ".join(parts)


Subscriber = Callable[[RuntimeEvent], None]


class EventBus:
    def __init__(self, keep: int = KEEP, clock: Callable[[], float] = time.time) -> None:
        self._ring: deque[RuntimeEvent] = deque(maxlen=keep)
        self._subs: list[Subscriber] = []
        self._seq = 0
        self._clock = clock
        self.epoch = time.time_ns() // 1000    # which daemon's seqs (see the module's doc)

    @property
    def last_seq(self) -> int:
        return self._seq

    def publish(self, instance: str, kind: str, *, from_state: str | None = None,
                to_state: str | None = None, pid: int | None = None,
                reason: str | None = None) -> RuntimeEvent:
        self._seq += 1
        ev = RuntimeEvent(self._seq, self._clock(), instance, kind, from_state, to_state, pid,
                          reason)
        self._ring.append(ev)
        for fn in tuple(self._subs):
            try:
                fn(ev)
            except Exception as e:  # noqa: BLE001 -- a subscriber bug must not break dispatch
                logger.opt(exception=True).error(
                    f"event subscriber {fn!r} failed ({type(e).__name__}: {e}); unsubscribed")
                self.unsubscribe(fn)
        return ev

    def recent(self, after: int = 0) -> list[RuntimeEvent]:
        """The kept events with seq > after, oldest first."""
        return [e for e in self._ring if e.seq > after]

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call fn(event) for every event from now on; returns the unsubscribe function."""
        self._subs.append(fn)
        return lambda: self.unsubscribe(fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        if fn in self._subs:
            self._subs.remove(fn)

    @property
    def subscribers(self) -> int:
        return len(self._subs)


def target_filter(targets: Iterable[str]) -> Callable[[RuntimeEvent], bool]:
    """Whether an event is about one of targets ("all", "web", "web:0"), as Runtime.select
    reads them; a worker's target also takes instances made after the filter (a reload)."""
    targets = set(targets)
    if not targets or "all" in targets:
        return lambda ev: True
    return lambda ev: ev.instance in targets or ev.instance.rpartition(":")[0] in targets


def publish_step(bus: EventBus, instance: str, event: core.Event, old: core.InstanceState,
                 new: core.InstanceState, actions: Iterable[core.Action]) -> None:
    """The events of one core step of instance: exit, adopted, state, ready (in that order).
    The reason of a transition is the one the core logged for it (rules.transition)."""
    pid = new.pid if new.state not in core.NO_PROCESS else old.pid
    to = core.LABEL[new.state]
    match event:
        case core.Exited(status=status) | core.ExitedWhileAway(status=status):
            bus.publish(instance, "exit", pid=old.pid, reason=status.describe())
        case core.Adopted(pid=adopted):
            bus.publish(instance, "adopted", to_state=to, pid=adopted)
    if new.state is old.state:
        return
    frm = core.LABEL[old.state]
    arrow = f"{frm} -> {to} ("
    reason = next((a.message[len(arrow):-1] for a in actions
                   if isinstance(a, core.Log) and a.message.startswith(arrow)), None)
    bus.publish(instance, "state", from_state=frm, to_state=to, pid=pid, reason=reason)
    if new.state is core.State.RUNNING and old.state is core.State.STARTING:
        how = ("reported by the worker" if isinstance(event, core.ReadyReported)
               else "after start_seconds")
        bus.publish(instance, "ready", to_state=to, pid=pid, reason=how)
