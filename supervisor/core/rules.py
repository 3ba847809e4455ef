"""The shapes every handler of the state machine is built from (machine.py holds the handlers
and the table): ``goto`` (a state change, with its one transition log and the timer cancels the
new state needs), ``stay``, ``spawn``, ``begin_stop``, and the small rules they share.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from supervisor.core.types import (
    LABEL,
    NO_TIMERS,
    Action,
    ArmTimer,
    CancelTimer,
    Exited,
    ExitedWhileAway,
    ExitStatus,
    InstanceState,
    Log,
    Policy,
    PostStop,
    RestartPolicy,
    Signal,
    Spawn,
    State,
    TimerKind,
    evolve,
)

Result = tuple[InstanceState, list[Action]]

# The timer kinds that may be armed in each state; entering a state cancels the others.
TIMERS_FOR: dict[State, frozenset[TimerKind]] = {
    State.STOPPED: frozenset(),
    State.STARTING: frozenset({TimerKind.START}),
    State.RUNNING: frozenset(),
    State.BACKOFF: frozenset({TimerKind.BACKOFF}),
    State.STOPPING: frozenset({TimerKind.GRACEFUL, TimerKind.KILL}),
    State.EXITED: frozenset(),
    State.FATAL: frozenset(),
}
TIMER_ORDER = list(TimerKind)



# -- helpers ------------------------------------------------------------------------------------
def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def fold_timers(timers: frozenset[TimerKind], actions: Iterable[Action]) -> frozenset[TimerKind]:
    armed = set(timers)
    for action in actions:
        if isinstance(action, ArmTimer):
            armed.add(action.kind)
        elif isinstance(action, CancelTimer):
            armed.discard(action.kind)
    return timers if armed == timers else frozenset(armed) or NO_TIMERS


def stay(inst: InstanceState, actions: list[Action], **changes: Any) -> Result:
    """No state change: apply field changes and keep ``timers`` in step with the actions."""
    timers = fold_timers(inst.timers, actions)
    return evolve(inst, timers=timers, **changes), actions


def goto(inst: InstanceState, new: State, reason: str, actions: Iterable[Action] = (),
          *, level: str = "INFO", extra_logs: Iterable[Log] = (), **changes: Any) -> Result:
    """A state change: the transition log, cancels for timers ``new`` does not allow, then
    ``extra_logs`` and ``actions``."""
    out: list[Action] = [Log(level, f"{LABEL[inst.state]} -> {LABEL[new]} ({reason})")]
    out.extend(extra_logs)
    dropped = inst.timers - TIMERS_FOR[new]          # (once, not once per timer kind)
    if dropped:
        out.extend(CancelTimer(k) for k in TIMER_ORDER if k in dropped)
    out.extend(actions)
    timers = fold_timers(inst.timers, out)
    return evolve(inst, state=new, timers=timers, **changes), out


def no_process() -> dict[str, Any]:
    """Field changes for 'the process is gone'."""
    return {"pid": None, "started_at": None, "ready_at": None, "kills_sent": 0}


def spawn(inst: InstanceState, reason: str, now: float, *, fresh: bool,
           level: str = "INFO", automatic: bool = False) -> Result:
    """-> STARTING with [Spawn()]. ``fresh``: a new run of attempts (explicit start, restart,
    or a process that had been RUNNING), so retries start again from 0. ``automatic``: the
    core respawns after an exit on its own (counted in ``restarts``)."""
    changes: dict[str, Any] = {**no_process(), "stop_requested": False,
                               "restart_after_stop": False}
    if automatic:
        changes["restarts"] = inst.restarts + 1
    if fresh:
        changes.update(retries=0, attempts_since=now, fatal_reason=None, recent_crashes=())
    elif inst.attempts_since is None:
        changes.update(attempts_since=now)
    return goto(inst, State.STARTING, reason, [Spawn()], level=level, **changes)


def exit_changes(ev: Exited | ExitedWhileAway) -> dict[str, Any]:
    return {**no_process(), "last_exit": ev.status, "last_exit_at": ev.now}


def is_success(status: ExitStatus, policy: Policy) -> bool:
    return status.code is not None and status.code in policy.success_codes


def restarts(status: ExitStatus, policy: Policy) -> bool:
    """Whether the restart policy starts a process that ended this way again."""
    return policy.restart is RestartPolicy.ALWAYS or (
        policy.restart is RestartPolicy.ON_FAILURE and not is_success(status, policy))


def begin_stop(inst: InstanceState, now: float, graceful: bool, reason: str, policy: Policy,
                *, stop_requested: bool, restart: bool, level: str = "INFO") -> Result:
    """-> STOPPING: post the graceful command, or signal at once."""
    actions: list[Action]
    if graceful:
        actions = [PostStop(deadline=now + policy.graceful_timeout),
                   ArmTimer(TimerKind.GRACEFUL, policy.graceful_timeout)]
        how = f"graceful, up to {secs(policy.graceful_timeout)}"
    else:
        actions = [Signal(policy.stop_signal), ArmTimer(TimerKind.KILL, policy.kill_timeout)]
        how = f"signal {policy.stop_signal}"
    return goto(inst, State.STOPPING, f"{reason}; {how}", actions, level=level,
                 stop_requested=stop_requested, restart_after_stop=restart, kills_sent=0)


def backoff_delay(policy: Policy, n: int) -> float:
    """min(initial * factor ** n, max) without overflow: factor ** n alone overflows a float
    (factor 2 from n = 1024 on), and 0 * inf would be nan."""
    initial, cap = policy.backoff_initial, policy.backoff_max
    if initial <= 0 or cap <= initial or n <= 0:
        return max(min(initial, cap), 0.0)
    try:
        delay = initial * policy.backoff_factor ** n
    except OverflowError:
        return cap
    return min(delay, cap)
