"""Scripted histories for the pure core: stopping and its escalation, restart requests, stale
heartbeats, adoption, stale timers and the events that are programming errors."""

from __future__ import annotations

from dataclasses import replace

import pytest

from supervisor.core import (
    Adopted,
    ArmTimer,
    CancelTimer,
    Exited,
    ExitStatus,
    HeartbeatStale,
    InstanceState,
    PostStop,
    ReadyReported,
    RestartPolicy,
    Signal,
    Spawn,
    Spawned,
    SpawnFailed,
    StartRequested,
    State,
    StopRequested,
    TimerFired,
    TransitionError,
    step,
)
from tests.unit.test_core_sim import (
    BACKOFF,
    GRACEFUL,
    KILL,
    POLICY,
    START,
    Sim,
    code,
    info,
    killed,
    started,
    warn,
)


# -- stopping -------------------------------------------------------------------------------------
def test_graceful_stop_happy_path() -> None:
    sim = started()
    assert sim.feed(StopRequested(5.0)) == [
        info("RUNNING -> STOPPING (stop requested; graceful, up to 10.00 s)"),
        PostStop(deadline=15.0), ArmTimer(GRACEFUL, 10.0)]
    assert (sim.state, sim.inst.stop_requested) == (State.STOPPING, True)
    assert sim.feed(Exited(5.3, code(0))) == [
        info("STOPPING -> STOPPED (exited: exit status 0)"), CancelTimer(GRACEFUL)]
    assert (sim.state, sim.inst.pid, sim.deadlines) == (State.STOPPED, None, {})
    assert sim.feed(StopRequested(6.0)) == []


def test_a_hurried_stop_takes_its_next_step_now() -> None:
    """The operator hurries a stop (Ctrl-C again): the armed timer fires early, with its own
    wording, and the next step is armed as usual."""
    sim = started()
    sim.feed(StopRequested(5.0))
    assert sim.feed(TimerFired(6.0, GRACEFUL, early=True)) == [
        warn("stop hurried; sending signal 15 now"), Signal(15),
        ArmTimer(KILL, 5.0)]
    assert sim.feed(TimerFired(6.5, KILL, early=True)) == [
        warn("stop hurried; sending signal 9 now"), Signal(9),
        ArmTimer(KILL, 5.0)]
    assert sim.inst.kills_sent == 1 and sim.state is State.STOPPING


def test_restarts_count_only_the_cores_own_respawns() -> None:
    sim = started(replace(POLICY, restart=RestartPolicy.ALWAYS, crash_interval=0.01))
    sim.feed(Exited(5.0, code(1)))                # respawned at once: 1
    sim.feed(Spawned(5.1, 101))
    assert sim.inst.restarts == 1
    sim.feed(StopRequested(6.0, graceful=False, restart=True))   # asked for: not counted
    sim.feed(Exited(6.1, killed(15)))
    sim.feed(Spawned(6.2, 102))
    assert sim.inst.restarts == 1
    sim.feed(StopRequested(7.0, graceful=False))
    sim.feed(Exited(7.1, killed(15)))
    sim.feed(StartRequested(8.0))                 # asked for: not counted
    assert sim.inst.restarts == 1


def test_stop_escalates_graceful_then_stop_signal_then_sigkill_repeatedly() -> None:
    sim = started()
    sim.feed(StopRequested(5.0))
    assert sim.fire(GRACEFUL) == [
        warn("did not exit within 10.00 s of the stop command; sending signal 15"),
        Signal(15), ArmTimer(KILL, 5.0)]
    assert sim.now == 15.0 and sim.state is State.STOPPING
    assert sim.fire(KILL) == [warn("still alive 5.00 s after signal 15; sending signal 9"),
                              Signal(9), ArmTimer(KILL, 5.0)]
    assert sim.fire(KILL) == [
        warn("still alive 5.00 s after signal 9 (sent 1 times); sending it again"),
        Signal(9), ArmTimer(KILL, 5.0)]
    assert sim.now == 25.0 and sim.inst.kills_sent == 2
    assert sim.feed(Exited(25.1, killed(9))) == [
        info("STOPPING -> STOPPED (exited: killed by signal 9)"), CancelTimer(KILL)]
    assert sim.inst.kills_sent == 0


def test_stop_not_graceful_signals_at_once() -> None:
    sim = started(replace(POLICY, stop_signal=2, kill_signal=9, kill_timeout=3.0))
    assert sim.feed(StopRequested(5.0, graceful=False)) == [
        info("RUNNING -> STOPPING (stop requested; signal 2)"), Signal(2), ArmTimer(KILL, 3.0)]
    assert sim.fire(KILL) == [warn("still alive 3.00 s after signal 2; sending signal 9"),
                              Signal(9), ArmTimer(KILL, 3.0)]


def test_stop_now_while_stopping_gracefully_skips_the_rest_of_the_wait() -> None:
    sim = started()
    sim.feed(StopRequested(5.0))
    assert sim.feed(StopRequested(6.0, graceful=False)) == [
        info("stop now requested; sending signal 15"), CancelTimer(GRACEFUL), Signal(15),
        ArmTimer(KILL, 5.0)]
    # once signalled, another stop adds nothing
    assert sim.feed(StopRequested(7.0, graceful=False)) == []
    assert sim.feed(StopRequested(7.5)) == []


def test_stop_during_starting() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 9))
    assert sim.feed(StopRequested(0.5)) == [
        info("STARTING -> STOPPING (stop requested; graceful, up to 10.00 s)"),
        CancelTimer(START), PostStop(deadline=10.5), ArmTimer(GRACEFUL, 10.0)]
    assert sim.feed(ReadyReported(0.6)) == []          # too late: it is being stopped
    assert sim.feed(Exited(0.7, code(0))) == [
        info("STOPPING -> STOPPED (exited: exit status 0)"), CancelTimer(GRACEFUL)]


def test_stop_during_starting_of_a_program_that_never_reads_the_control_word() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 9))
    sim.feed(StopRequested(0.5))
    assert sim.fire(GRACEFUL)[1:] == [Signal(15), ArmTimer(KILL, 5.0)]
    sim.feed(Exited(sim.at(0.01), killed(15)))
    assert sim.state is State.STOPPED


def test_stop_between_spawn_and_spawned_stops_the_new_process() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    assert sim.feed(StopRequested(0.0)) == [
        info("STARTING -> STOPPING (stop requested; waiting for the spawn to finish)")]
    assert sim.feed(Spawned(0.01, 77)) == [
        info("spawned pid 77 while stopping; asking it to stop"), PostStop(deadline=10.01),
        ArmTimer(GRACEFUL, 10.0)]
    recorded = sim.inst.pid
    assert recorded == 77
    with pytest.raises(TransitionError, match="already running"):
        step(sim.inst, Spawned(0.02, 78), POLICY)
    sim.feed(Exited(0.5, code(0)))
    assert (sim.state, sim.inst.pid) == (State.STOPPED, None)


@pytest.mark.parametrize(("restart", "state"), [(False, State.STOPPED),
                                                (True, State.STARTING)])
def test_stop_between_spawn_and_a_failed_spawn(restart: bool, state: State) -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(StopRequested(0.0, restart=restart))
    actions = sim.feed(SpawnFailed(0.0, "boom"))
    assert sim.state is state, sim.history
    assert (actions[-1] == Spawn()) is restart


def test_stop_during_backoff() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 1))
    sim.feed(Exited(0.1, code(1)))
    assert sim.feed(StopRequested(0.12)) == [info("BACKOFF -> STOPPED (stop requested)"),
                                             CancelTimer(BACKOFF)]
    # the backoff timer the runtime may already have queued is stale now
    assert sim.feed(TimerFired(0.2, BACKOFF)) == []
    assert (sim.state, sim.deadlines) == (State.STOPPED, {})


def test_an_asked_stop_is_never_followed_by_a_restart() -> None:
    sim = started(replace(POLICY, restart=RestartPolicy.ALWAYS))
    sim.feed(StopRequested(5.0))
    sim.feed(Exited(5.2, killed(15)))           # even an "unclean" exit
    assert sim.state is State.STOPPED
    for event in (TimerFired(30.0, GRACEFUL), TimerFired(30.0, KILL), TimerFired(30.0, START),
                  TimerFired(30.0, BACKOFF), Exited(31.0, code(1)), HeartbeatStale(32.0, 9.0),
                  ReadyReported(33.0)):
        assert sim.feed(event) == [], event
    assert sim.state is State.STOPPED
    assert not any(isinstance(a, Spawn) for _, _, actions in sim.history[4:] for a in actions)


def test_start_requested_while_stopping_starts_after_the_exit() -> None:
    sim = started()
    sim.feed(StopRequested(5.0))
    assert sim.feed(StartRequested(5.1)) == [
        info("start requested while stopping; will start after exit")]
    assert sim.feed(StartRequested(5.2)) == []
    assert sim.feed(Exited(5.3, code(0))) == [
        info("STOPPING -> STARTING (exited: exit status 0; restarting)"), CancelTimer(GRACEFUL),
        Spawn()]
    assert (sim.inst.stop_requested, sim.inst.restart_after_stop) == (False, False)


# -- restart requests -----------------------------------------------------------------------------
def test_restart_request_stops_then_starts() -> None:
    sim = started()
    assert sim.feed(StopRequested(5.0, restart=True)) == [
        info("RUNNING -> STOPPING (restart requested; graceful, up to 10.00 s)"),
        PostStop(deadline=15.0), ArmTimer(GRACEFUL, 10.0)]
    assert (sim.inst.stop_requested, sim.inst.restart_after_stop) == (False, True)
    assert sim.feed(Exited(5.5, code(0))) == [
        info("STOPPING -> STARTING (exited: exit status 0; restarting)"), CancelTimer(GRACEFUL),
        Spawn()]
    assert (sim.inst.retries, sim.inst.last_exit, sim.inst.pid) == (0, code(0), None)
    sim.feed(Spawned(5.5, 101))
    sim.feed(ReadyReported(5.9))
    assert sim.state is State.RUNNING


def test_stop_while_restarting_cancels_the_start_and_vice_versa() -> None:
    sim = started()
    sim.feed(StopRequested(5.0, restart=True))
    assert sim.feed(StopRequested(5.1)) == [
        info("stop requested while stopping; will stay stopped after exit")]
    assert sim.feed(StopRequested(5.2, restart=True)) == [
        info("restart requested while stopping; will start again after exit")]
    assert sim.feed(StopRequested(5.3)) != []
    sim.feed(Exited(5.4, code(0)))
    assert sim.state is State.STOPPED


def test_restart_request_during_backoff_spawns_at_once_with_a_fresh_count() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 1))
    sim.feed(Exited(0.1, code(1)))
    assert sim.feed(StopRequested(0.12, restart=True)) == [
        info("BACKOFF -> STARTING (restart requested)"), CancelTimer(BACKOFF), Spawn()]
    assert sim.inst.retries == 0


# -- heartbeat ------------------------------------------------------------------------------------
def test_stale_heartbeat_restarts_a_hung_worker() -> None:
    sim = started()
    assert sim.feed(HeartbeatStale(20.0, 12.34)) == [
        warn("RUNNING -> STOPPING (heartbeat stale for 12.3 s; restarting; signal 15)"),
        Signal(15), ArmTimer(KILL, 5.0)]
    assert (sim.inst.stop_requested, sim.inst.restart_after_stop) == (False, True)
    assert sim.feed(HeartbeatStale(21.0, 13.0)) == []     # already on it
    sim.fire(KILL)
    assert sim.feed(Exited(25.1, killed(9))) == [
        info("STOPPING -> STARTING (exited: killed by signal 9; restarting)"), CancelTimer(KILL),
        Spawn()]


def test_stale_heartbeat_outside_running_is_ignored() -> None:
    sim = Sim()
    assert sim.feed(HeartbeatStale(0.0, 99.0)) == []
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 1))
    assert sim.feed(HeartbeatStale(0.5, 99.0)) == []
    assert sim.state is State.STARTING


# -- adoption -------------------------------------------------------------------------------------
def test_adopt_a_ready_worker() -> None:
    sim = Sim(now=100.0)
    assert sim.feed(Adopted(100.0, pid=321, ready=True, started_at=40.0)) == [
        info("STOPPED -> RUNNING (adopted pid 321, up for 60.00 s; ready)")]
    assert (sim.inst.pid, sim.inst.started_at, sim.inst.ready_at) == (321, 40.0, 100.0)
    sim.feed(StopRequested(101.0))
    sim.feed(Exited(101.5, ExitStatus(code=0, source="worker")))
    assert sim.state is State.STOPPED


def test_adopt_a_worker_that_is_not_ready_yet_waits_the_rest_of_start_seconds() -> None:
    sim = Sim(now=100.0)
    assert sim.feed(Adopted(100.0, pid=321, ready=False, started_at=99.75)) == [
        info("STOPPED -> STARTING (adopted pid 321, up for 0.25 s; not ready yet)"),
        ArmTimer(START, 0.75)]
    assert sim.fire(START) == [
        info("STARTING -> RUNNING (up for 1.00 s, start_seconds; no ready report)")]


def test_adopt_a_worker_past_start_seconds_that_is_not_ready() -> None:
    sim = Sim(now=100.0)
    actions = sim.feed(Adopted(100.0, pid=5, ready=False, started_at=10.0))
    assert actions[-1] == ArmTimer(START, 0.0)
    sim.feed(ReadyReported(100.01))
    assert sim.state is State.RUNNING


# -- stale timers, programming errors -------------------------------------------------------------
def test_stale_timers_are_ignored() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 1))
    # a kind that is not armed, in a state whose handler takes timers
    assert sim.feed(TimerFired(0.1, BACKOFF)) == []
    sim.feed(ReadyReported(0.2))
    # START was cancelled at RUNNING; its callback may still be queued in the runtime
    assert sim.feed(TimerFired(1.0, START)) == []
    sim.feed(StopRequested(2.0, graceful=False))
    assert sim.feed(TimerFired(2.1, GRACEFUL)) == []
    assert sim.state is State.STOPPING and sim.inst.kills_sent == 0


def test_a_fired_timer_is_no_longer_armed() -> None:
    sim = started()
    sim.feed(StopRequested(5.0))
    sim.fire(GRACEFUL)
    assert sim.inst.timers == frozenset({KILL})


@pytest.mark.parametrize("state", [s for s in State if s not in (State.STARTING,
                                                                   State.STOPPING)])
def test_spawn_reports_we_did_not_ask_for_are_errors(state: State) -> None:
    inst = InstanceState(state=state)
    with pytest.raises(TransitionError, match="Spawned cannot happen"):
        step(inst, Spawned(0.0, 1), POLICY)
    with pytest.raises(TransitionError, match="SpawnFailed cannot happen"):
        step(inst, SpawnFailed(0.0, "x"), POLICY)


def test_a_second_spawned_is_an_error() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 1))
    with pytest.raises(TransitionError, match="already running"):
        step(sim.inst, Spawned(0.1, 2), POLICY)


@pytest.mark.parametrize("state", [s for s in State if s is not State.STOPPED])
def test_adoption_is_only_from_stopped(state: State) -> None:
    with pytest.raises(TransitionError, match="Adopted cannot happen"):
        step(InstanceState(state=state), Adopted(0.0, 1, True, 0.0), POLICY)


def test_step_does_not_mutate_its_input() -> None:
    inst = InstanceState()
    new, _ = step(inst, StartRequested(0.0), POLICY)
    assert inst == InstanceState() and new is not inst
