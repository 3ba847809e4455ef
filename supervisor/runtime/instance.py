"""One supervised instance ("web:0"): the core's record of it plus the process facts the
runtime holds for it (pidfd, control block, timers, log paths, clients waiting on it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loguru import logger

from supervisor import core
from supervisor.config import WorkerConfig
from supervisor.core import NO_PROCESS, InstanceState, State, TimerKind
from supervisor.logs import last_line
from supervisor.loop import Timer
from supervisor.runtime.console import Pipe
from supervisor.runtime.procstats import attach_pids
from worker import block as blk
from worker.published import WorkerData


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
    exits: dict[str, int] = field(default_factory=dict)   # exit_reason -> count, this daemon
    pipes: list[Pipe] = field(default_factory=list)   # output read by the daemon (console.py)
    last_output: str | None = None   # its last line of output when it last exited
    last_output_file: str | None = None   # the log file that line is in
    note: str | None = None          # what its last exit tells (a program that daemonized)

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


def attached_many(insts: Sequence[Instance]) -> set[Instance]:
    """Those of insts whose process attached to its block (``uses_library``), with the status
    pages of the ones not known to have attached read in one batch (procstats): a stop of
    10,000 plain programs asks it of every one. Only a 0 is taken from the batch ("never
    attached", as the checked read says of a page it cannot use); any other pid word is read
    again through the block's checked path."""
    out = {i for i in insts if i.block is not None and i.block.attached_latched}
    rest = [i for i in insts if i.block is not None and i not in out]
    pids = attach_pids([i.block.status_name for i in rest if i.block is not None])
    out.update(i for i, pid in zip(rest, pids, strict=True) if pid and i.uses_library)
    return out


def report_output(inst: Instance, ctl: str) -> None:
    """When a process has ended badly: its last line of output (stderr's file first) kept for
    status, and for BACKOFF and FATAL one log line naming the files and how to see them."""
    files = [p for p in dict.fromkeys((inst.stderr_path, inst.stdout_path)) if p]
    inst.last_output = inst.last_output_file = None
    for path in files:
        inst.last_output = last_line(path)
        if inst.last_output is not None:
            inst.last_output_file = path
            break
    if inst.st.state is State.EXITED or not files:
        return
    last = f"; its last line: {inst.last_output!r}" if inst.last_output else ""
    logger.log("ERROR" if inst.st.state is State.FATAL else "WARNING",
               f"{inst.name} output in {' and '.join(reversed(files))}{last}; see it: "
               f"{ctl} tail {inst.name}")


@dataclass(eq=False, slots=True)
class Waiter:
    """A client waiting until every instance in `pending` satisfies `done`."""

    pending: set[Instance]
    done: Callable[[Instance], bool]
    finish: Callable[[], None]


def worker_data(inst: Instance) -> WorkerData | None:
    """What inst's worker published in its status page: status text, counters and gauges
    (``pyvisor_worker_*`` series, ``status``). None when it has no process or its process
    never attached to its block. Bounded and safe against any bytes (worker.published)."""
    if not inst.has_process or not inst.uses_library or inst.block is None:
        return None
    return inst.block.worker_data()
