"""One supervised instance ("web:0"): the core's record of it plus the process facts the
runtime holds for it (pidfd, control block, timers, log paths, clients waiting on it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from supervisor import core
from supervisor.config import WorkerConfig
from supervisor.core import NO_PROCESS, InstanceState, TimerKind
from supervisor.loop import Timer
from worker import block as blk


@dataclass(eq=False, slots=True)
class Instance:
    name: str                      # "web:0"
    worker: str                    # "web"
    index: int
    cfg: WorkerConfig
    policy: core.Policy
    st: InstanceState = field(default_factory=InstanceState)
    block: blk.ControlBlock | None = None
    pidfd: int | None = None
    child: bool = True             # our child (reaped by waitid) or adopted from another daemon
    incarnation: int = 0
    timers: dict[TimerKind, Timer] = field(default_factory=dict)
    hb_timer: Timer | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None
    removed: bool = False          # gone from the config: forget it once stopped
    cgroup: str | None = None      # the instance's cgroup directory, when it has one
    waiters: list[Waiter] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.st.pid if self.st.state not in NO_PROCESS else None

    @property
    def has_process(self) -> bool:
        return self.st.state not in NO_PROCESS

    @property
    def wants_start(self) -> bool:
        """Whether it should run when nothing else says so (at start-up, after a config
        change): the operator's last wish if there is one, else the config's autostart."""
        return self.st.wanted if self.st.wanted is not None else self.cfg.autostart

    @property
    def uses_library(self) -> bool:
        """Whether the process attached to its control block (and so reads the control word):
        only such a process can be stopped gracefully."""
        return self.block is not None and self.block.attached


@dataclass(eq=False, slots=True)
class Waiter:
    """A client waiting until every instance in `pending` satisfies `done`."""

    pending: set[Instance]
    done: Callable[[Instance], bool]
    finish: Callable[[], None]
