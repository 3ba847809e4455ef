"""The per-instance state machine: ``step(inst, event, policy) -> (inst, actions)``.

Pure: no clock (time is ``event.now``), no I/O, no globals that change. The runtime owns the
process, the timers and the log; it feeds facts in and carries out the actions that come back,
in order.

The rules live in one table, ``TRANSITIONS``, keyed by ``(State, event type)`` (as in h11).
A pair that is not in the table is ignored: the same state comes back and no actions.
``IGNORED`` lists those pairs on purpose (so a test can check that every pair was thought about),
and ``ERRORS`` lists the pairs that can only come from a bug in the runtime; they raise
``TransitionError``: a ``Spawned`` we did not ask for means a process nobody supervises.

Rules every handler keeps (``goto`` and ``stay`` in rules.py enforce them):

* Every state change emits exactly one ``Log`` whose message is ``"OLD -> NEW (reason)"``; it
  comes first. Other log lines (escalations, the FATAL hint) never have that shape.
* Each state allows some timer kinds (``TIMERS_FOR``). Entering a state cancels every armed
  timer it does not allow, with ``CancelTimer`` right after the transition log. ``ArmTimer``
  for an armed kind replaces it. ``inst.timers`` is always the set of armed kinds.
* A ``TimerFired`` for a kind that is not armed is stale (cancelled, or replaced by a re-arm
  the runtime had not yet seen) and is ignored. A timer that fires is no longer armed.

Contract with the runtime: ``Spawn`` is always the last action of a step; after carrying it out
the runtime feeds ``Spawned`` or ``SpawnFailed``. Other events may come in between (a stop while
STARTING with no pid yet goes to STOPPING and the process is asked to stop once ``Spawned``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from supervisor.core.rules import (
    TIMERS_FOR,
    Result,
    backoff_delay,
    begin_stop,
    exit_changes,
    goto,
    is_success,
    no_process,
    restarts,
    secs,
    spawn,
    stay,
)
from supervisor.core.types import (
    MAY_BE_SPAWNING,
    NO_PROCESS,
    NO_TIMERS,
    Action,
    Adopted,
    ArmTimer,
    CancelTimer,
    Event,
    Exited,
    ExitedWhileAway,
    ExitStatusLearned,
    HeartbeatStale,
    InstanceState,
    IntentRestored,
    Log,
    Policy,
    PostStop,
    ReadyReported,
    RestartPolicy,
    Signal,
    Spawned,
    SpawnFailed,
    StartRequested,
    State,
    StopInFlight,
    StopRequested,
    TimerFired,
    TimerKind,
    Unverifiable,
    evolve,
)

Handler = Callable[[InstanceState, Any, Policy], Result]
E = TypeVar("E", StartRequested, StopRequested, Spawned, SpawnFailed, ReadyReported, TimerFired,
            Exited, HeartbeatStale, Adopted, ExitedWhileAway, ExitStatusLearned, IntentRestored,
            Unverifiable)

EVENT_TYPES: tuple[type, ...] = (
    StartRequested, StopRequested, Spawned, SpawnFailed, ReadyReported, TimerFired, Exited,
    HeartbeatStale, Adopted, ExitedWhileAway, ExitStatusLearned, IntentRestored, Unverifiable,
)

_set_field = object.__setattr__


class TransitionError(Exception):
    """An event that can only come from a bug in the runtime (the state says it cannot happen)."""


# -- handlers: STOPPED / EXITED / FATAL ------------------------------------------------------------
def _idle_start(inst: InstanceState, ev: StartRequested, policy: Policy) -> Result:
    return spawn(inst, "start requested", ev.now, fresh=True)


def _stopped_adopted(inst: InstanceState, ev: Adopted, policy: Policy) -> Result:
    up = max(0.0, ev.now - ev.started_at)
    changes: dict[str, Any] = {"pid": ev.pid, "started_at": ev.started_at, "retries": 0,
                               "attempts_since": ev.started_at, "stop_requested": False,
                               "restart_after_stop": False, "kills_sent": 0}
    if ev.stop is not None:
        return _adopted_stopping(inst, ev, ev.stop, up, policy, changes)
    if ev.ready:
        return goto(inst, State.RUNNING, f"adopted pid {ev.pid}, up for {secs(up)}; ready",
                     ready_at=ev.now, **changes)
    remaining = max(0.0, policy.start_seconds - up)
    return goto(inst, State.STARTING, f"adopted pid {ev.pid}, up for {secs(up)}; not ready yet",
                 [ArmTimer(TimerKind.START, remaining)], ready_at=None, **changes)


def _adopted_stopping(inst: InstanceState, ev: Adopted, stop: StopInFlight, up: float,
                      policy: Policy, changes: dict[str, Any]) -> Result:
    """Carry on with the previous daemon's stop: the same deadline, no second command."""
    changes.update(stop_requested=not stop.restart, restart_after_stop=stop.restart,
                   wanted=stop.restart, ready_at=None)
    head = f"adopted pid {ev.pid}, up for {secs(up)}, while being stopped"
    # never more than the whole graceful wait: a deadline from a record is not believed past it
    left = min(stop.deadline - ev.now, policy.graceful_timeout)
    if stop.graceful and left > 0:
        return goto(inst, State.STOPPING, f"{head}; graceful, {secs(left)} left",
                     [ArmTimer(TimerKind.GRACEFUL, left)], **changes)
    return goto(inst, State.STOPPING, f"{head}; signal {policy.stop_signal}",
                 [Signal(policy.stop_signal), ArmTimer(TimerKind.KILL, policy.kill_timeout)],
                 **changes)


def _stopped_exited_away(inst: InstanceState, ev: ExitedWhileAway, policy: Policy) -> Result:
    """The process ended while no daemon watched it: the restart policy and the operator's
    last wish decide, as for an exit seen live."""
    what = f"exited while supervisord was down: {ev.status.describe()}"
    changes = exit_changes(ev)
    if inst.wanted is False:
        return stay(inst, [Log("INFO", f"{what}; stays stopped, as asked")], **changes)
    why = "a restart was under way" if ev.restart else f"restart={policy.restart.value}"
    if not ev.restart and not restarts(ev.status, policy):
        return goto(inst, State.EXITED, f"{what}; {why}", **changes)
    state, actions = spawn(inst, f"{what}; {why}", ev.now,
                            fresh=True, level="WARNING", automatic=True)
    return evolve(state, last_exit=ev.status, last_exit_at=ev.now), actions


def _any_status_learned(inst: InstanceState, ev: ExitStatusLearned, policy: Policy) -> Result:
    if inst.last_exit is None or inst.last_exit.known or not ev.status.known:
        return inst, []
    return stay(inst, [Log("INFO", f"the exit status is known now: {ev.status.describe()}")],
                 last_exit=ev.status)


def _stopped_intent(inst: InstanceState, ev: IntentRestored, policy: Policy) -> Result:
    if ev.ended is State.FATAL:
        hint = f"Fix it, then: {policy.ctl} start {policy.name or 'NAME'}"
        return goto(inst, State.FATAL, "it was FATAL before supervisord restarted",
                    level="WARNING", wanted=ev.wanted,
                    fatal_reason=f"FATAL before supervisord restarted; {hint}")
    if ev.ended is State.EXITED:
        return goto(inst, State.EXITED, "it had exited before supervisord restarted; "
                    f"restart={policy.restart.value}", wanted=ev.wanted)
    return stay(inst, [], wanted=ev.wanted)


def _stopped_unverifiable(inst: InstanceState, ev: Unverifiable, policy: Policy) -> Result:
    name = policy.name or "NAME"
    message = (f"its process from before may still be running but cannot be verified "
               f"({ev.why}); not started again, so there is never a second copy. Check it, "
               f"then: {policy.ctl} start {name}")
    return goto(inst, State.FATAL, "unverifiable after a daemon restart", level="ERROR",
                extra_logs=[Log("ERROR", message)], fatal_reason=message)


# -- handlers: STARTING ----------------------------------------------------------------------------
def _starting_spawned(inst: InstanceState, ev: Spawned, policy: Policy) -> Result:
    if inst.pid is not None:
        raise TransitionError(f"Spawned pid {ev.pid} but pid {inst.pid} is already running")
    return stay(inst, [Log("INFO", f"spawned pid {ev.pid}"),
                        ArmTimer(TimerKind.START, policy.start_seconds)],
                 pid=ev.pid, started_at=ev.now)


def _failed_start(inst: InstanceState, now: float, what: str, policy: Policy,
                  changes: dict[str, Any], verb: str, cause: str = "") -> Result:
    """A start that did not get to RUNNING: BACKOFF, or FATAL once start_retries are used up
    (the FATAL reason names the last ``cause``, if any: status shows it)."""
    retries = inst.retries + 1
    if retries > policy.start_retries:
        since = inst.attempts_since if inst.attempts_since is not None else now
        name = policy.name or "NAME"
        last = f" (last: {cause})" if cause else ""
        message = (f"{verb} {retries} times within {secs(now - since)}{last}; giving up "
                   f"(FATAL). Fix it, then: {policy.ctl} start {name}")
        return goto(inst, State.FATAL, f"{what}; {retries} failed starts", level="ERROR",
                     extra_logs=[Log("ERROR", message)], retries=retries, fatal_reason=message,
                     **changes)
    delay = backoff_delay(policy, retries - 1)
    reason = f"{what}; retry {retries} of {policy.start_retries} in {secs(delay)}"
    return goto(inst, State.BACKOFF, reason, [ArmTimer(TimerKind.BACKOFF, delay)],
                 level="WARNING", retries=retries, backoff=delay, **changes)


def _starting_spawn_failed(inst: InstanceState, ev: SpawnFailed, policy: Policy) -> Result:
    if inst.pid is not None:
        raise TransitionError(f"SpawnFailed but pid {inst.pid} is running")
    return _failed_start(inst, ev.now, f"spawn failed: {ev.error}", policy, no_process(),
                         "failed to spawn", ev.error)


def _to_running(inst: InstanceState, now: float, reason: str) -> Result:
    return goto(inst, State.RUNNING, reason, ready_at=now, retries=0, attempts_since=None,
                 fatal_reason=None)


def _starting_ready(inst: InstanceState, ev: ReadyReported, policy: Policy) -> Result:
    if inst.pid is None or inst.started_at is None:
        return inst, []         # nothing spawned yet: nothing can be ready
    return _to_running(inst, ev.now, f"ready after {secs(ev.now - inst.started_at)}")


def _starting_timer(inst: InstanceState, ev: TimerFired, policy: Policy) -> Result:
    # Only START can be armed in STARTING (step() already dropped it from inst.timers).
    started = inst.started_at if inst.started_at is not None else ev.now
    return _to_running(
        inst, ev.now, f"up for {secs(ev.now - started)}, start_seconds; no ready report")


def _starting_exited(inst: InstanceState, ev: Exited, policy: Policy) -> Result:
    what = f"exited: {ev.status.describe()}"
    changes = exit_changes(ev)
    if inst.stop_requested:       # not reachable through this table (a stop goes STOPPING)
        return goto(inst, State.STOPPED, what, **changes)
    if policy.restart is RestartPolicy.NEVER:
        return goto(inst, State.EXITED, f"{what}; restart=never", level="WARNING", **changes)
    if policy.restart is RestartPolicy.ON_FAILURE and is_success(ev.status, policy):
        return goto(inst, State.EXITED, f"{what}; success, restart=on-failure", **changes)
    return _failed_start(inst, ev.now, what, policy, changes, "exited")


def _active_stop(inst: InstanceState, ev: StopRequested, policy: Policy) -> Result:
    verb = "restart requested" if ev.restart else "stop requested"
    if inst.pid is None:          # STARTING, Spawn carried out, Spawned not yet fed
        return goto(inst, State.STOPPING, f"{verb}; waiting for the spawn to finish",
                     stop_requested=not ev.restart, restart_after_stop=ev.restart, kills_sent=0,
                     pending_stop_graceful=ev.graceful)
    return begin_stop(inst, ev.now, ev.graceful, verb, policy, stop_requested=not ev.restart,
                       restart=ev.restart)


# -- handlers: RUNNING -----------------------------------------------------------------------------
def _running_exited(inst: InstanceState, ev: Exited, policy: Policy) -> Result:
    what = f"exited: {ev.status.describe()}"
    changes = exit_changes(ev)
    if inst.stop_requested:
        return goto(inst, State.STOPPED, what, **changes)
    rule = f"restart={policy.restart.value}"
    if not restarts(ev.status, policy):
        level = "INFO" if is_success(ev.status, policy) else "WARNING"
        return goto(inst, State.EXITED, f"{what}; {rule}", level=level, **changes)
    # Rule: exits from RUNNING are counted over a window (systemd's StartLimitBurst), so a
    # program that keeps dying soon after it counts as up cannot loop for ever: the first is
    # restarted at once, the next ones in the window back off, past crash_burst it is FATAL.
    crashes = tuple(t for t in inst.recent_crashes if ev.now - t <= policy.crash_interval)
    crashes += (ev.now,)
    changes["recent_crashes"] = crashes
    if len(crashes) > policy.crash_burst:
        name = policy.name or "NAME"
        message = (f"exited {len(crashes)} times within {secs(ev.now - crashes[0])} of "
                   f"running (a crash loop); giving up (FATAL). Fix it, then: {policy.ctl} "
                   f"start {name}")
        return goto(inst, State.FATAL, f"{what}; crash loop", level="ERROR",
                     extra_logs=[Log("ERROR", message)], fatal_reason=message, **changes)
    if len(crashes) > 1:
        delay = backoff_delay(policy, len(crashes) - 2)
        reason = (f"{what}; {rule}; exit {len(crashes)} within "
                  f"{secs(policy.crash_interval)}, restarting in {secs(delay)}")
        return goto(inst, State.BACKOFF, reason, [ArmTimer(TimerKind.BACKOFF, delay)],
                     level="WARNING", backoff=delay, retries=0, attempts_since=None, **changes)
    state, actions = spawn(inst, f"{what}; {rule}", ev.now, fresh=True, level="WARNING",
                           automatic=True)
    return evolve(state, last_exit=ev.status, last_exit_at=ev.now,
                               recent_crashes=crashes), actions


def _running_stale(inst: InstanceState, ev: HeartbeatStale, policy: Policy) -> Result:
    # A hung worker cannot read the control word: signal at once.
    return begin_stop(inst, ev.now, False, f"heartbeat stale for {ev.age:.1f} s; restarting",
                       policy, stop_requested=False, restart=True, level="WARNING")


# -- handlers: BACKOFF -----------------------------------------------------------------------------
def _backoff_start(inst: InstanceState, ev: StartRequested, policy: Policy) -> Result:
    return spawn(inst, "start requested; skipping backoff", ev.now, fresh=False)


def _backoff_timer(inst: InstanceState, ev: TimerFired, policy: Policy) -> Result:
    if inst.retries == 0:       # backing off after a crash of a RUNNING process
        reason = f"backoff {secs(inst.backoff)} over; restarting after a crash"
    else:
        reason = (f"backoff {secs(inst.backoff)} over; retry {inst.retries} of "
                  f"{policy.start_retries}")
    return spawn(inst, reason, ev.now, fresh=False, automatic=True)


def _backoff_stop(inst: InstanceState, ev: StopRequested, policy: Policy) -> Result:
    if ev.restart:
        return spawn(inst, "restart requested", ev.now, fresh=True)
    return goto(inst, State.STOPPED, "stop requested", stop_requested=True)


# -- handlers: STOPPING ----------------------------------------------------------------------------
def _stopping_start(inst: InstanceState, ev: StartRequested, policy: Policy) -> Result:
    if inst.restart_after_stop:
        return inst, []
    return stay(inst, [Log("INFO", "start requested while stopping; will start after exit")],
                 restart_after_stop=True)


def _stopping_stop(inst: InstanceState, ev: StopRequested, policy: Policy) -> Result:
    """A second stop/restart while stopping: it decides whether we come back, and a
    non-graceful one skips the rest of the graceful wait."""
    actions: list[Action] = []
    if ev.restart != inst.restart_after_stop:
        then = "start again" if ev.restart else "stay stopped"
        actions.append(Log("INFO", f"{'restart' if ev.restart else 'stop'} requested while "
                                   f"stopping; will {then} after exit"))
    if not ev.graceful and TimerKind.GRACEFUL in inst.timers:
        actions += [Log("INFO", f"stop now requested; sending signal {policy.stop_signal}"),
                    CancelTimer(TimerKind.GRACEFUL), Signal(policy.stop_signal),
                    ArmTimer(TimerKind.KILL, policy.kill_timeout)]
    return stay(inst, actions, restart_after_stop=ev.restart, stop_requested=not ev.restart)


def _stopping_spawned(inst: InstanceState, ev: Spawned, policy: Policy) -> Result:
    """A stop came between Spawn and Spawned: the new process is asked to stop at once."""
    if inst.pid is not None:
        raise TransitionError(f"Spawned pid {ev.pid} but pid {inst.pid} is already running")
    log = Log("INFO", f"spawned pid {ev.pid} while stopping; asking it to stop")
    if inst.pending_stop_graceful:
        actions: list[Action] = [log, PostStop(deadline=ev.now + policy.graceful_timeout),
                                 ArmTimer(TimerKind.GRACEFUL, policy.graceful_timeout)]
    else:                         # the stop asked was not graceful: no command, the signal
        actions = [log, Signal(policy.stop_signal), ArmTimer(TimerKind.KILL, policy.kill_timeout)]
    return stay(inst, actions, pid=ev.pid, started_at=ev.now, pending_stop_graceful=True)


def _stopping_spawn_failed(inst: InstanceState, ev: SpawnFailed, policy: Policy) -> Result:
    if inst.pid is not None:
        raise TransitionError(f"SpawnFailed but pid {inst.pid} is running")
    if inst.restart_after_stop:
        return spawn(inst, f"spawn failed: {ev.error}; restarting", ev.now, fresh=False)
    return goto(inst, State.STOPPED, f"spawn failed: {ev.error}", stop_requested=True,
                 restart_after_stop=False, **no_process())


def _stopping_timer(inst: InstanceState, ev: TimerFired, policy: Policy) -> Result:
    if ev.early:
        nxt = policy.stop_signal if ev.kind is TimerKind.GRACEFUL else policy.kill_signal
        msg = f"stop hurried; sending signal {nxt} now"    # the daemon has logged why
        if ev.kind is TimerKind.GRACEFUL:
            return stay(inst, [Log("WARNING", msg), Signal(policy.stop_signal),
                                ArmTimer(TimerKind.KILL, policy.kill_timeout)])
        return stay(inst, [Log("WARNING", msg), Signal(policy.kill_signal),
                            ArmTimer(TimerKind.KILL, policy.kill_timeout)],
                     kills_sent=inst.kills_sent + 1)
    if ev.kind is TimerKind.GRACEFUL:
        msg = (f"did not exit within {secs(policy.graceful_timeout)} of the stop command; "
               f"sending signal {policy.stop_signal}")
        return stay(inst, [Log("WARNING", msg), Signal(policy.stop_signal),
                            ArmTimer(TimerKind.KILL, policy.kill_timeout)])
    if inst.kills_sent == 0:
        msg = (f"still alive {secs(policy.kill_timeout)} after signal {policy.stop_signal}; "
               f"sending signal {policy.kill_signal}")
    else:
        msg = (f"still alive {secs(policy.kill_timeout)} after signal {policy.kill_signal} "
               f"(sent {inst.kills_sent} times); sending it again")
    return stay(inst, [Log("WARNING", msg), Signal(policy.kill_signal),
                        ArmTimer(TimerKind.KILL, policy.kill_timeout)],
                 kills_sent=inst.kills_sent + 1)


def _stopping_exited(inst: InstanceState, ev: Exited, policy: Policy) -> Result:
    what = f"exited: {ev.status.describe()}"
    if inst.restart_after_stop:
        state, actions = spawn(inst, f"{what}; restarting", ev.now, fresh=True)
        return evolve(state, last_exit=ev.status, last_exit_at=ev.now), actions
    return goto(inst, State.STOPPED, what, stop_requested=True, restart_after_stop=False,
                 **exit_changes(ev))


# -- the table -------------------------------------------------------------------------------------
TRANSITIONS: dict[tuple[State, type], Handler] = {}


def _on(event_type: type[E], handler: Callable[[InstanceState, E, Policy], Result],
        *states: State) -> None:
    for state in states:
        TRANSITIONS[(state, event_type)] = cast(Handler, handler)


_on(StartRequested, _idle_start, *NO_PROCESS)
_on(Adopted, _stopped_adopted, State.STOPPED)
_on(ExitedWhileAway, _stopped_exited_away, State.STOPPED)
_on(IntentRestored, _stopped_intent, State.STOPPED)
_on(Unverifiable, _stopped_unverifiable, State.STOPPED)
_on(ExitStatusLearned, _any_status_learned, *State)

_on(Spawned, _starting_spawned, State.STARTING)
_on(SpawnFailed, _starting_spawn_failed, State.STARTING)
_on(ReadyReported, _starting_ready, State.STARTING)
_on(TimerFired, _starting_timer, State.STARTING)
_on(Exited, _starting_exited, State.STARTING)
_on(StopRequested, _active_stop, State.STARTING, State.RUNNING)

_on(Exited, _running_exited, State.RUNNING)
_on(HeartbeatStale, _running_stale, State.RUNNING)

_on(StartRequested, _backoff_start, State.BACKOFF)
_on(TimerFired, _backoff_timer, State.BACKOFF)
_on(StopRequested, _backoff_stop, State.BACKOFF)

_on(StartRequested, _stopping_start, State.STOPPING)
_on(StopRequested, _stopping_stop, State.STOPPING)
_on(TimerFired, _stopping_timer, State.STOPPING)
_on(Spawned, _stopping_spawned, State.STOPPING)
_on(SpawnFailed, _stopping_spawn_failed, State.STOPPING)
_on(Exited, _stopping_exited, State.STOPPING)

# Pairs that are bugs in the runtime: we never asked for a spawn, or adoption is only done at
# daemon start, when every instance is still STOPPED.
ERRORS: frozenset[tuple[State, type]] = frozenset(
    {(s, Spawned) for s in State if s not in MAY_BE_SPAWNING}
    | {(s, SpawnFailed) for s in State if s not in MAY_BE_SPAWNING}
    | {(s, Adopted) for s in State if s is not State.STOPPED}
    | {(s, ExitedWhileAway) for s in State if s is not State.STOPPED}
    | {(s, IntentRestored) for s in State if s is not State.STOPPED}
    | {(s, Unverifiable) for s in State if s is not State.STOPPED}
)

# Pairs ignored on purpose (same state, no actions), with the reason:
IGNORED: frozenset[tuple[State, type]] = frozenset(
    # already started, or starting: nothing to do
    {(State.STARTING, StartRequested), (State.RUNNING, StartRequested)}
    # nothing is running: a stop is a no-op
    | {(s, StopRequested) for s in NO_PROCESS}
    # no process: a late or duplicate ready report / exit report / heartbeat check
    | {(s, ReadyReported) for s in (*NO_PROCESS, State.BACKOFF, State.RUNNING, State.STOPPING)}
    | {(s, Exited) for s in (*NO_PROCESS, State.BACKOFF)}
    # heartbeats count only once RUNNING; a stopping worker is being dealt with anyway
    | {(s, HeartbeatStale) for s in (*NO_PROCESS, State.STARTING, State.BACKOFF, State.STOPPING)}
    # no timer is ever armed in these states: any TimerFired is stale
    | {(s, TimerFired) for s in (*NO_PROCESS, State.RUNNING)}
)


def step(inst: InstanceState, event: Event, policy: Policy) -> Result:
    """Feed one event to one instance; return its new record and the actions to carry out."""
    key = (inst.state, type(event))
    if key in ERRORS:
        raise TransitionError(f"{type(event).__name__} cannot happen in {inst.state.value}: "
                              f"{event!r}")
    handler = TRANSITIONS.get(key)
    if handler is None:
        return inst, []
    if isinstance(event, TimerFired):
        if event.kind not in inst.timers:
            return inst, []     # stale: cancelled or re-armed since
        inst = evolve(inst, timers=inst.timers - {event.kind} or NO_TIMERS)
    new, actions = handler(inst, event, policy)
    # Rule: what the operator asks is remembered whatever the state made of it.
    if isinstance(event, StartRequested | StopRequested):
        wanted = True if isinstance(event, StartRequested) else event.restart
        if new is inst:
            new = evolve(new, wanted=wanted)
        elif new.wanted is not wanted:
            # the record the handler just made (goto/stay/spawn: a new object that nothing
            # else holds yet): set in place rather than copied once more
            _set_field(new, "wanted", wanted)
    if not new.timers <= TIMERS_FOR[new.state]:
        raise AssertionError(f"timers {set(new.timers)} armed in {new.state.value}")
    return new, actions
