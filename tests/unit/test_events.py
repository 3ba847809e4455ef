"""The runtime's event bus (supervisor.runtime.events): seqs, the bounded ring, subscribers
(one that raises is dropped), and the events one core step publishes, in order."""

from __future__ import annotations

import pytest

from supervisor import core
from supervisor.core import ExitStatus, InstanceState, State
from supervisor.runtime.events import EventBus, RuntimeEvent, publish_step, target_filter


def test_seq_ring_and_subscribers() -> None:
    bus = EventBus(keep=3, clock=lambda: 1.5)
    got: list[int] = []
    unsubscribe = bus.subscribe(lambda ev: got.append(ev.seq))
    for i in range(5):
        bus.publish(f"w:{i}", "state", from_state="STOPPED", to_state="STARTING")
    assert [e.seq for e in bus.recent()] == [3, 4, 5] and bus.last_seq == 5
    assert [e.seq for e in bus.recent(after=4)] == [5]
    assert got == [1, 2, 3, 4, 5]
    unsubscribe()
    bus.publish("w:0", "exit")
    assert got == [1, 2, 3, 4, 5] and bus.subscribers == 0


def test_a_subscriber_that_raises_is_dropped_and_the_others_still_run() -> None:
    bus = EventBus()
    got: list[str] = []

    def broken(ev: RuntimeEvent) -> None:
        raise RuntimeError("bug")

    bus.subscribe(broken)
    bus.subscribe(lambda ev: got.append(ev.instance))
    bus.publish("a:0", "exit")
    bus.publish("b:0", "exit")
    assert got == ["a:0", "b:0"] and bus.subscribers == 1


@pytest.mark.parametrize(("targets", "hits"), [
    (["all"], {"web:0", "web:1", "db:0"}), ([], {"web:0", "web:1", "db:0"}),
    (["web"], {"web:0", "web:1"}), (["web:1", "db"], {"web:1", "db:0"}), (["we"], set()),
])
def test_target_filter(targets: list[str], hits: set[str]) -> None:
    want = target_filter(targets)
    evs = [RuntimeEvent(i, 0.0, n, "exit") for i, n in enumerate(["web:0", "web:1", "db:0"])]
    assert {e.instance for e in evs if want(e)} == hits


def step_events(event: core.Event, old: InstanceState) -> list[tuple[object, ...]]:
    bus = EventBus()
    new, actions = core.step(old, event, core.Policy(name="w", start_seconds=1.0))
    publish_step(bus, "w:0", event, old, new, actions)
    return [(e.kind, e.from_state, e.to_state, e.pid, e.reason) for e in bus.recent()]


def test_a_crash_is_an_exit_then_a_state_change() -> None:
    running = InstanceState(state=State.RUNNING, pid=42, started_at=0.0, ready_at=0.5)
    got = step_events(core.Exited(100.0, ExitStatus(signal=9)), running)
    assert got[0] == ("exit", None, None, 42, "killed by signal 9")
    assert got[1][:3] == ("state", "RUNNING", got[1][2]) and got[1][2] != "RUNNING"
    assert len(got) == 2


def test_ready_reported_is_a_state_change_then_ready() -> None:
    starting = InstanceState(state=State.STARTING, pid=7, started_at=0.0)
    got = step_events(core.ReadyReported(0.2), starting)
    assert [g[:4] for g in got] == [("state", "STARTING", "RUNNING", 7),
                                    ("ready", None, "RUNNING", 7)]
    assert got[1][4] == "reported by the worker"


def test_adoption_comes_first() -> None:
    got = step_events(core.Adopted(5.0, 99, True, 1.0), InstanceState())
    assert got[0] == ("adopted", None, "RUNNING", 99, None)
    assert got[1][:4] == ("state", "STOPPED", "RUNNING", 99)


def test_a_step_with_no_transition_publishes_nothing() -> None:
    running = InstanceState(state=State.RUNNING, pid=42, started_at=0.0, ready_at=0.5)
    assert step_events(core.StartRequested(1.0), running) == []
