"""Test support for the pure core: ``Sim``, a fake runtime (fake clock, timers kept from the
actions) that checks the machine's rules after every step: one "OLD -> NEW (reason)" log per state
change and none otherwise, and ``inst.timers`` equal to the timers the actions left armed.

Imported by tests/unit/test_core*.py (holds no tests itself)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from supervisor.core import (
    Action,
    ArmTimer,
    CancelTimer,
    Event,
    ExitStatus,
    InstanceState,
    Log,
    Policy,
    ReadyReported,
    Spawned,
    StartRequested,
    State,
    TimerFired,
    TimerKind,
    step,
)

START, BACKOFF = TimerKind.START, TimerKind.BACKOFF
GRACEFUL, KILL = TimerKind.GRACEFUL, TimerKind.KILL

TRANSITION_RE = re.compile(r"^([A-Z]+) -> ([A-Z]+) \((.+)\)$")

POLICY = Policy(name="web", backoff_initial=0.1, backoff_factor=2.0, backoff_max=0.3,
                start_retries=5, start_seconds=1.0, graceful_timeout=10.0, kill_timeout=5.0)


def transitions(actions: list[Action]) -> list[str]:
    return [a.message for a in actions if isinstance(a, Log) and TRANSITION_RE.match(a.message)]


@dataclass
class Sim:
    """Drives one instance. ``deadlines`` is what a runtime would hold: kind -> due time."""

    policy: Policy = POLICY
    inst: InstanceState = field(default_factory=InstanceState)
    now: float = 0.0
    deadlines: dict[TimerKind, float] = field(default_factory=dict)
    history: list[tuple[str, State, list[Action]]] = field(default_factory=list)

    def feed(self, event: Event) -> list[Action]:
        assert event.now >= self.now, f"clock went back: {event.now} < {self.now}"
        self.now = event.now
        old = self.inst
        new, actions = step(old, event, self.policy)
        self.history.append((type(event).__name__, new.state, actions))
        self._check(old, new, event, actions)
        self.inst = new
        return actions

    def _check(self, old: InstanceState, new: InstanceState, event: Event,
               actions: list[Action]) -> None:
        logs = transitions(actions)
        if new.state is old.state:
            assert logs == [], f"no state change ({old.state}) but transition logs {logs}"
        else:
            assert len(logs) == 1, f"{old.state} -> {new.state}: want one transition log: {logs}"
            m = TRANSITION_RE.match(logs[0])
            assert m and (m[1], m[2]) == (old.state.value, new.state.value), logs[0]
            first = actions[0]
            assert isinstance(first, Log) and first.message == logs[0], f"log not first: {actions}"
        if isinstance(event, TimerFired) and event.kind in self.deadlines:
            del self.deadlines[event.kind]
        for a in actions:
            if isinstance(a, ArmTimer):
                self.deadlines[a.kind] = self.now + a.delay
            elif isinstance(a, CancelTimer):
                assert a.kind in self.deadlines, f"cancel of unarmed {a.kind}: {actions}"
                del self.deadlines[a.kind]
        assert new.timers == frozenset(self.deadlines), \
            f"inst.timers {set(new.timers)} != armed {set(self.deadlines)} after {actions}"

    def at(self, dt: float) -> float:
        """The time ``dt`` seconds after the last event."""
        return self.now + dt

    def fire(self, kind: TimerKind) -> list[Action]:
        """Advance the clock to the armed timer's deadline and fire it."""
        assert kind in self.deadlines, f"{kind} not armed; armed: {self.deadlines}"
        return self.feed(TimerFired(self.deadlines[kind], kind))

    @property
    def state(self) -> State:
        return self.inst.state


def code(n: int) -> ExitStatus:
    return ExitStatus(code=n)


def killed(sig: int) -> ExitStatus:
    return ExitStatus(signal=sig)


def info(msg: str) -> Log:
    return Log("INFO", msg)


def warn(msg: str) -> Log:
    return Log("WARNING", msg)


def started(policy: Policy = POLICY, pid: int = 100) -> Sim:
    """An instance that was started at t=0 and reported ready at t=0.2."""
    sim = Sim(policy)
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, pid))
    sim.feed(ReadyReported(0.2))
    assert sim.state is State.RUNNING, sim.history
    return sim
