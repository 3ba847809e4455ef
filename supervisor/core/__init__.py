"""The pure core: one state machine per supervised instance. Events in, actions out, no I/O.

This package must not import os, signal, psutil, posix_ipc, loguru or anything that does I/O
(a test checks). Time comes in with each event (``now``), so tests drive it with a fake clock.
"""

from supervisor.core.machine import IGNORED, TRANSITIONS, TransitionError, step
from supervisor.core.types import (
    Action,
    Adopted,
    ArmTimer,
    CancelTimer,
    Event,
    Exited,
    ExitStatus,
    HeartbeatStale,
    InstanceState,
    Log,
    Policy,
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
    TimerKind,
)

__all__ = [
    "IGNORED",
    "TRANSITIONS",
    "Action",
    "Adopted",
    "ArmTimer",
    "CancelTimer",
    "Event",
    "ExitStatus",
    "Exited",
    "HeartbeatStale",
    "InstanceState",
    "Log",
    "Policy",
    "PostStop",
    "ReadyReported",
    "RestartPolicy",
    "Signal",
    "Spawn",
    "SpawnFailed",
    "Spawned",
    "StartRequested",
    "State",
    "StopRequested",
    "TimerFired",
    "TimerKind",
    "TransitionError",
    "step",
]
