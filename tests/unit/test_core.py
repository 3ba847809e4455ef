"""Scripted histories for the pure core (supervisor.core.machine) driven by a fake clock:
starting, failed starts (backoff, FATAL), restart policies. Each test asserts the whole sequence
of states and actions; ``Sim.feed`` checks the machine's invariants after every step."""

from __future__ import annotations

from dataclasses import replace

import pytest

from supervisor.core import (
    ArmTimer,
    CancelTimer,
    Exited,
    ExitStatus,
    InstanceState,
    Log,
    ReadyReported,
    RestartPolicy,
    Spawn,
    Spawned,
    SpawnFailed,
    StartRequested,
    State,
    StopRequested,
)
from tests.unit.test_core_sim import (
    BACKOFF,
    POLICY,
    START,
    Sim,
    code,
    info,
    killed,
    started,
    transitions,
    warn,
)


# -- starting -------------------------------------------------------------------------------------
def test_normal_start_with_ready_report() -> None:
    sim = Sim()
    assert sim.feed(StartRequested(0.0)) == [info("STOPPED -> STARTING (start requested)"), Spawn()]
    assert sim.state is State.STARTING
    assert sim.feed(Spawned(0.01, 4242)) == [info("spawned pid 4242"), ArmTimer(START, 1.0)]
    assert (sim.state, sim.inst.pid, sim.inst.started_at) == (State.STARTING, 4242, 0.01)
    assert sim.feed(ReadyReported(0.42)) == [
        info("STARTING -> RUNNING (ready after 0.41 s)"), CancelTimer(START)]
    assert sim.inst == InstanceState(state=State.RUNNING, pid=4242, started_at=0.01,
                                     ready_at=0.42, retries=0, timers=frozenset(),
                                     wanted=True)
    # a second ready report (a worker may report again) changes nothing
    assert sim.feed(ReadyReported(0.5)) == []


def test_start_via_start_seconds_for_a_plain_program() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 7))
    assert sim.fire(START) == [
        info("STARTING -> RUNNING (up for 1.00 s, start_seconds; no ready report)")]
    assert (sim.state, sim.inst.ready_at, sim.inst.timers) == (State.RUNNING, 1.0, frozenset())


def test_start_requested_while_starting_or_running_is_ignored() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    assert sim.feed(StartRequested(0.1)) == []
    sim.feed(Spawned(0.1, 7))
    assert sim.feed(StartRequested(0.2)) == []
    sim.feed(ReadyReported(0.3))
    assert sim.feed(StartRequested(0.4)) == []
    assert sim.state is State.RUNNING


# -- failed starts: backoff, FATAL ----------------------------------------------------------------
def test_crash_loop_backs_off_then_goes_fatal_with_the_recovery_hint() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 100))
    delays = []
    for attempt in range(1, 6):
        actions = sim.feed(Exited(sim.at(0.05), code(1)))
        arm = actions[-1]
        assert isinstance(arm, ArmTimer) and arm.kind is BACKOFF, actions
        delays.append(arm.delay)
        assert actions == [
            warn(f"STARTING -> BACKOFF (exited: exit status 1; retry {attempt} of 5 in "
                 f"{arm.delay:.2f} s)"), CancelTimer(START), arm]
        assert (sim.state, sim.inst.retries, sim.inst.pid) == (State.BACKOFF, attempt, None)
        assert sim.inst.last_exit == code(1)
        assert sim.fire(BACKOFF) == [
            info(f"BACKOFF -> STARTING (backoff {arm.delay:.2f} s over; retry {attempt} of 5)"),
            Spawn()]
        sim.feed(Spawned(sim.now, 100 + attempt))
    assert delays == [0.1, 0.2, 0.3, 0.3, 0.3]
    assert sim.now == pytest.approx(1.45)
    hint = "exited 6 times within 1.50 s; giving up (FATAL). Fix it, then: supervisorctl start web"
    assert sim.feed(Exited(sim.at(0.05), code(1))) == [
        Log("ERROR", "STARTING -> FATAL (exited: exit status 1; 6 failed starts)"),
        Log("ERROR", hint), CancelTimer(START)]
    assert (sim.state, sim.inst.retries, sim.inst.fatal_reason) == (State.FATAL, 6, hint)
    assert sim.deadlines == {}
    # FATAL stays FATAL until asked; an explicit start begins a fresh run of attempts
    assert sim.feed(StopRequested(2.0)) == []
    assert sim.feed(StartRequested(3.0)) == [info("FATAL -> STARTING (start requested)"), Spawn()]
    assert (sim.inst.retries, sim.inst.fatal_reason, sim.inst.attempts_since) == (0, None, 3.0)


def test_backoff_delays_grow_by_the_factor_up_to_the_cap() -> None:
    policy = replace(POLICY, backoff_initial=0.5, backoff_factor=3.0, backoff_max=10.0,
                     start_retries=10)
    sim = Sim(policy)
    sim.feed(StartRequested(0.0))
    delays = []
    for _ in range(5):
        sim.feed(Spawned(sim.now, 1))
        sim.feed(Exited(sim.at(0.01), code(2)))
        delays.append(sim.inst.backoff)
        sim.fire(BACKOFF)
    assert delays == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_spawn_failure_counts_as_a_failed_start() -> None:
    policy = replace(POLICY, start_retries=1, name="api")
    sim = Sim(policy)
    sim.feed(StartRequested(0.0))
    err = "No such file or directory: '/usr/bin/nope'"
    assert sim.feed(SpawnFailed(0.0, err)) == [
        warn(f"STARTING -> BACKOFF (spawn failed: {err}; retry 1 of 1 in 0.10 s)"),
        ArmTimer(BACKOFF, 0.1)]
    sim.fire(BACKOFF)
    hint = (f"failed to spawn 2 times within 0.10 s (last: {err}); giving up (FATAL). "
            "Fix it, then: supervisorctl start api")
    assert sim.feed(SpawnFailed(sim.now, err)) == [
        Log("ERROR", f"STARTING -> FATAL (spawn failed: {err}; 2 failed starts)"),
        Log("ERROR", hint)]
    assert sim.state is State.FATAL


def test_fatal_hint_has_a_placeholder_without_a_worker_name() -> None:
    sim = Sim(replace(POLICY, name="", start_retries=0))
    sim.feed(StartRequested(0.0))
    actions = sim.feed(SpawnFailed(0.0, "boom"))
    assert actions[1] == Log("ERROR", "failed to spawn 1 times within 0.00 s (last: boom); giving "
                                      "up (FATAL). Fix it, then: supervisorctl start NAME")


def test_a_ready_start_resets_retries() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 1))
    sim.feed(Exited(0.1, code(1)))
    sim.fire(BACKOFF)
    sim.feed(Spawned(sim.now, 2))
    assert sim.inst.retries == 1
    sim.feed(ReadyReported(sim.at(0.1)))
    assert (sim.state, sim.inst.retries) == (State.RUNNING, 0)


def test_start_during_backoff_spawns_at_once_and_keeps_the_count() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 1))
    sim.feed(Exited(0.1, code(1)))
    assert sim.feed(StartRequested(0.12)) == [
        info("BACKOFF -> STARTING (start requested; skipping backoff)"), CancelTimer(BACKOFF),
        Spawn()]
    assert (sim.state, sim.inst.retries, sim.deadlines) == (State.STARTING, 1, {})


# -- restart policies -----------------------------------------------------------------------------
@pytest.mark.parametrize(("restart", "status", "restarts"), [
    (RestartPolicy.ALWAYS, code(0), True),
    (RestartPolicy.ALWAYS, code(3), True),
    (RestartPolicy.ALWAYS, killed(9), True),
    (RestartPolicy.ON_FAILURE, code(0), False),
    (RestartPolicy.ON_FAILURE, code(3), False),     # 3 is in success_codes below
    (RestartPolicy.ON_FAILURE, code(4), True),
    (RestartPolicy.ON_FAILURE, killed(9), True),
    (RestartPolicy.ON_FAILURE, ExitStatus(source="unknown"), True),
    (RestartPolicy.NEVER, code(0), False),
    (RestartPolicy.NEVER, code(4), False),
    (RestartPolicy.NEVER, killed(9), False),
])
def test_restart_policy_after_running(restart: RestartPolicy, status: ExitStatus,
                                      restarts: bool) -> None:
    sim = started(replace(POLICY, restart=restart, success_codes=frozenset({0, 3})))
    actions = sim.feed(Exited(5.0, status))
    reason = f"exited: {status.describe()}; restart={restart.value}"
    if restarts:
        assert actions == [warn(f"RUNNING -> STARTING ({reason})"), Spawn()]
        assert (sim.state, sim.inst.retries, sim.inst.pid) == (State.STARTING, 0, None)
    else:
        success = status.code in (0, 3)
        assert actions == [Log("INFO" if success else "WARNING", f"RUNNING -> EXITED ({reason})")]
        assert sim.state is State.EXITED
        assert sim.feed(StopRequested(6.0)) == []
    assert (sim.inst.last_exit, sim.inst.last_exit_at) == (status, 5.0)


def test_on_failure_worked_example_from_the_brief() -> None:
    sim = started()
    assert transitions(sim.feed(Exited(3.0, code(3)))) == [
        "RUNNING -> STARTING (exited: exit status 3; restart=on-failure)"]


@pytest.mark.parametrize(("restart", "status", "state"), [
    (RestartPolicy.NEVER, code(1), State.EXITED),
    (RestartPolicy.ON_FAILURE, code(0), State.EXITED),     # it finished its job
    (RestartPolicy.ON_FAILURE, code(1), State.BACKOFF),
    (RestartPolicy.ALWAYS, code(0), State.BACKOFF),        # a quick exit is a failed start
])
def test_restart_policy_during_starting(restart: RestartPolicy, status: ExitStatus,
                                        state: State) -> None:
    sim = Sim(replace(POLICY, restart=restart))
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 1))
    sim.feed(Exited(0.3, status))
    assert sim.state is state, sim.history


def test_exited_then_start_again() -> None:
    sim = started(replace(POLICY, restart=RestartPolicy.NEVER))
    sim.feed(Exited(5.0, code(0)))
    assert sim.feed(StartRequested(6.0)) == [info("EXITED -> STARTING (start requested)"), Spawn()]


def test_evolve_is_dataclasses_replace() -> None:
    import dataclasses

    import pytest

    from supervisor.core.types import InstanceState, State, evolve
    st = InstanceState(state=State.RUNNING, pid=5, restarts=2)
    assert evolve(st, pid=6, wanted=False) == dataclasses.replace(st, pid=6, wanted=False)
    assert evolve(st) == st and evolve(st) is not st
    with pytest.raises(TypeError, match="no field"):
        evolve(st, pidd=6)
