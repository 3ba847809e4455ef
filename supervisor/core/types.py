"""Types of the pure core: states, events (facts), actions (imperatives), policy.

Events are things that happened (``Spawned``, ``Exited``); actions are things the runtime must do
(``Spawn``, ``Signal``). Every event carries the time it was observed (``now``, monotonic
seconds) so the core never reads a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any


class State(enum.Enum):
    # Members are singletons compared by identity: hash them by identity too (in C), not
    # through Enum's Python-level __hash__ (every step looks states up in a few dicts).
    __hash__ = object.__hash__

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


LABEL: dict[State, str] = {s: s.value for s in State}
"""Each state as logs, events and replies spell it (Enum's ``value`` is a property in Python,
looked up several times in every transition)."""

# State classes, defined once beside the states and used everywhere else by name.
NO_PROCESS: frozenset[State] = frozenset({State.STOPPED, State.EXITED, State.FATAL})
"""No process: nothing to stop, nothing can exit."""
MAY_BE_SPAWNING: frozenset[State] = frozenset({State.STARTING, State.STOPPING})
"""A spawn may be under way: a stop can come between Spawn and Spawned."""
COMING_UP: frozenset[State] = frozenset({State.STARTING, State.BACKOFF})
"""A start that has not settled: it ends in RUNNING, or in FATAL/EXITED."""
IN_TRANSITION: frozenset[State] = COMING_UP | {State.STOPPING}
"""On the way somewhere: a start, stop or reload has settled once its instances are in none."""
SUMMARY_ORDER: tuple[State, ...] = (State.RUNNING, State.STARTING, State.BACKOFF, State.STOPPING,
                                    State.FATAL, State.EXITED, State.STOPPED)
"""The order in which summaries (systemd STATUS=, the start-up line) count the states."""


class RestartPolicy(enum.Enum):
    __hash__ = object.__hash__

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class TimerKind(enum.Enum):
    __hash__ = object.__hash__

    START = "start"          # start_seconds elapsed: a program without the library counts as up
    BACKOFF = "backoff"      # backoff delay over: spawn again
    GRACEFUL = "graceful"    # graceful_timeout over: send stop_signal to the process group
    KILL = "kill"            # kill_timeout over: SIGKILL the process group


NO_TIMERS: frozenset[TimerKind] = frozenset()   # one shared empty set for every instance


@dataclass(frozen=True, slots=True)
class Policy:
    """The part of a worker's config that the state machine needs (seconds, signal numbers)."""

    name: str = ""               # worker name ("web"), for the recovery hint in the FATAL message
    ctl: str = "supervisorctl"   # the command that reaches this daemon as pasted (with -c FILE)
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    success_codes: frozenset[int] = frozenset({0})
    backoff_initial: float = 0.1
    backoff_factor: float = 2.0
    backoff_max: float = 30.0
    start_retries: int = 5
    start_seconds: float = 1.0
    graceful_timeout: float = 10.0
    stop_signal: int = 15        # SIGTERM
    kill_timeout: float = 5.0
    kill_signal: int = 9         # SIGKILL
    crash_burst: int = 5         # more exits from RUNNING than this within crash_interval:
    crash_interval: float = 10.0  # a crash loop, FATAL


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended. Exactly one of code / signal is set, or neither (unknown)."""

    code: int | None = None
    signal: int | None = None
    source: str = "waitid"   # waitid | pidfd | worker | unknown

    @property
    def known(self) -> bool:
        return self.code is not None or self.signal is not None

    def describe(self) -> str:
        if self.code is not None:
            return f"exit status {self.code}"
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return "exit status unknown"


# -- events -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StartRequested:
    now: float


@dataclass(frozen=True, slots=True)
class StopRequested:
    now: float
    graceful: bool = True     # False: skip the control word, go straight to stop_signal
    restart: bool = False     # a restart: stop, then start again once the process is gone


@dataclass(frozen=True, slots=True)
class Spawned:
    now: float
    pid: int


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    now: float
    error: str               # e.g. "No such file or directory: '/usr/bin/nope'"


@dataclass(frozen=True, slots=True)
class ReadyReported:
    now: float


@dataclass(frozen=True, slots=True)
class TimerFired:
    now: float
    kind: TimerKind
    early: bool = False      # fired before its time because the operator hurried a stop


@dataclass(frozen=True, slots=True)
class Exited:
    now: float
    status: ExitStatus


@dataclass(frozen=True, slots=True)
class HeartbeatStale:
    now: float
    age: float               # seconds since the last heartbeat


@dataclass(frozen=True, slots=True)
class StopInFlight:
    """A stop the previous daemon had begun when it went (it is carried on, not begun again)."""

    graceful: bool           # STOP_GRACEFUL was posted (else the stop signal was sent)
    deadline: float          # monotonic seconds: when the graceful wait ends
    restart: bool = False    # a restart: start again once the process is gone


@dataclass(frozen=True, slots=True)
class Adopted:
    """A running process found at daemon start (its block verified) is ours again."""

    now: float
    pid: int
    ready: bool              # the worker reported ready (or a plain program past start_seconds)
    started_at: float        # monotonic seconds at which it was started (best known)
    stop: StopInFlight | None = None


@dataclass(frozen=True, slots=True)
class ExitedWhileAway:
    """At daemon start: the instance's process ended while no daemon watched it."""

    now: float
    status: ExitStatus
    restart: bool = False    # it was being stopped for a restart: started again regardless


@dataclass(frozen=True, slots=True)
class ExitStatusLearned:
    """How a process that was reported gone with an unknown status really ended."""

    now: float
    status: ExitStatus


@dataclass(frozen=True, slots=True)
class Unverifiable:
    """At daemon start: the instance's recorded process may be alive but cannot be verified
    (its /proc entry cannot be read): it must not be started a second time."""

    now: float
    why: str


@dataclass(frozen=True, slots=True)
class IntentRestored:
    """At daemon start: what the operator last asked for this instance, as the previous
    daemon recorded it (True: started, False: stopped)."""

    now: float
    wanted: bool | None
    # where it had ended (EXITED, FATAL) when no process of it was adopted: it stays there,
    # never started again by the crash (a finished restart: never job would run twice)
    ended: State | None = None


Event = (
    StartRequested | StopRequested | Spawned | SpawnFailed | ReadyReported | TimerFired
    | Exited | HeartbeatStale | Adopted | ExitedWhileAway | ExitStatusLearned | IntentRestored
    | Unverifiable
)


# -- actions ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Spawn:
    pass


@dataclass(frozen=True, slots=True)
class PostStop:
    """Write STOP_GRACEFUL (deadline = now + graceful_timeout) into the control word and wake."""

    deadline: float


@dataclass(frozen=True, slots=True)
class Signal:
    """Send signum to the process group: the worker and everything it forked."""

    signum: int


@dataclass(frozen=True, slots=True)
class ArmTimer:
    kind: TimerKind
    delay: float             # seconds from the event's now; re-arming a kind replaces it


@dataclass(frozen=True, slots=True)
class CancelTimer:
    kind: TimerKind


@dataclass(frozen=True, slots=True)
class Log:
    level: str               # "INFO" | "WARNING" | "ERROR"
    message: str             # without the instance name; the runtime prefixes "name:index "


Action = Spawn | PostStop | Signal | ArmTimer | CancelTimer | Log


# -- the per-instance record ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InstanceState:
    state: State = State.STOPPED
    pid: int | None = None
    started_at: float | None = None        # when the current process was spawned
    ready_at: float | None = None
    retries: int = 0                       # consecutive failed starts
    attempts_since: float | None = None    # when the current run of start attempts began
    backoff: float = 0.0                   # the delay used for the current BACKOFF
    stop_requested: bool = False           # a stop was asked: never restart after this exit
    restart_after_stop: bool = False       # stop, then start again (restart / stale heartbeat)
    kills_sent: int = 0                    # kill_signal sent this many times in this STOPPING
    last_exit: ExitStatus | None = None
    last_exit_at: float | None = None
    fatal_reason: str | None = None
    recent_crashes: tuple[float, ...] = ()  # times of exits from RUNNING, within crash_interval
    # What the operator last asked for (runit's "want", beside the state): True started,
    # False stopped, None nothing yet (the config's autostart decides). Kept across daemon
    # crashes and re-execs; every StartRequested / StopRequested sets it (see step()).
    wanted: bool | None = None
    pending_stop_graceful: bool = True     # the kind of a stop asked between Spawn and Spawned
    # Respawns the core decided on by itself after an exit (restart policy, backoff retries);
    # never reset, kept across daemon crashes (intent file) and re-execs (re-exec state).
    restarts: int = 0
    timers: frozenset[TimerKind] = NO_TIMERS   # armed kinds


_FIELDS = tuple(f.name for f in fields(InstanceState))
_FIELD_SET = frozenset(_FIELDS)
_new = object.__new__
_set = object.__setattr__


def evolve(inst: InstanceState, **changes: Any) -> InstanceState:
    """``dataclasses.replace(inst, **changes)`` without its per-call field introspection (a
    step makes one or two; a stop all makes 20,000 within one loop turn). InstanceState has
    no __post_init__ and no init=False fields, so setting every slot is what __init__ does."""
    if not _FIELD_SET.issuperset(changes):
        raise TypeError(f"InstanceState has no field {sorted(set(changes) - _FIELD_SET)}")
    new = _new(InstanceState)
    for name in _FIELDS:
        _set(new, name, changes[name] if name in changes else getattr(inst, name))
    return new
