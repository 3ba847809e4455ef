"""How the runtime learns that a process ended, and how it ended.

A pidfd per process is registered with the loop (readable when the process exits). A child is
reaped through its own pidfd (waitid(P_PIDFD)): waitid(P_ALL) walks every child of the daemon
(~70 ns each: 0.7 ms at 10,000 workers for each call that finds nothing), so it runs only in the
sweep after SIGCHLD (``Reaper.reap``, at most once per loop turn), which also reaps orphaned
zombies when the daemon is a container's PID 1. Adopted processes (not our children) get their
status from the worker's exit record in the control block, else from PIDFD_INFO_EXIT (Linux ≥
6.15), else "unknown".
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import signal
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from loguru import logger

from supervisor import core
from supervisor.heap import collector_paused
from supervisor.runtime.instance import Instance, attached_many
from supervisor.runtime.trees import Ending
from worker import block as blk

if TYPE_CHECKING:
    from supervisor.runtime.runtime import Runtime

# struct pidfd_info (VER0, 64 bytes) and ioctl PIDFD_GET_INFO = _IOWR(0xFF, 11, 64)
_PIDFD_INFO = struct.Struct("QQ11Ii")
_PIDFD_GET_INFO = 0xC0000000 | (_PIDFD_INFO.size << 16) | (0xFF << 8) | 11
_PIDFD_INFO_EXIT = 1 << 3


EXIT_REASONS = ("success", "failure", "signal", "unknown")


def exit_reason(status: core.ExitStatus, policy: core.Policy) -> str:
    """One of EXIT_REASONS: an exit code counted as success by the worker's exit_codes, any
    other code, a signal, or not known."""
    if status.code is not None:
        return "success" if status.code in policy.success_codes else "failure"
    return "signal" if status.signal is not None else "unknown"


def exit_status_from_wait(si_code: int, si_status: int, source: str) -> core.ExitStatus:
    if si_code == os.CLD_EXITED:
        return core.ExitStatus(code=si_status, source=source)
    return core.ExitStatus(signal=si_status, source=source)


def exit_status_from_record(rec: blk.ExitRecord) -> core.ExitStatus:
    if rec.status < 0:
        return core.ExitStatus(signal=-rec.status, source="worker")
    return core.ExitStatus(code=rec.status, source="worker")


def pidfd_exit_status(pidfd: int) -> core.ExitStatus | None:
    """PIDFD_INFO_EXIT (Linux ≥ 6.15) for a process that is not our child, once it is reaped."""
    buf = array.array("B", bytes(_PIDFD_INFO.size))
    struct.pack_into("Q", buf, 0, _PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buf, True)
    except OSError as e:
        if e.errno not in (errno.ENOTTY, errno.EINVAL, errno.ESRCH):
            logger.debug(f"PIDFD_GET_INFO: {e}")
        return None
    fields = _PIDFD_INFO.unpack(buf.tobytes())
    if not fields[0] & _PIDFD_INFO_EXIT:
        return None
    wstatus = fields[-1]
    if os.WIFEXITED(wstatus):
        return core.ExitStatus(code=os.WEXITSTATUS(wstatus), source="pidfd")
    if os.WIFSIGNALED(wstatus):
        return core.ExitStatus(signal=os.WTERMSIG(wstatus), source="pidfd")
    return None


class Reaper:
    """Watches every process by pidfd and reports its exit to the runtime (``Exited``)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.by_pid: dict[int, Instance] = {}
        self._sweeping = False
        self._ready: dict[Instance, int] = {}    # readable this turn: inst -> its pidfd
        rt.loop.add_signal_handler(signal.SIGCHLD, lambda _s: self._sweep_soon())

    def watch(self, inst: Instance, pid: int, pidfd: int) -> None:
        inst.pidfd = pidfd
        self.by_pid[pid] = inst
        self.rt.loop.add_reader(pidfd, lambda _m: self._on_pidfd(inst))

    def forget(self, inst: Instance) -> None:
        """Stop watching the process of inst (gone, or living on without us) and close its
        pidfd."""
        if inst.pidfd is not None:
            self.rt.loop.remove(inst.pidfd)
            os.close(inst.pidfd)
            inst.pidfd = None

    def _on_pidfd(self, inst: Instance) -> None:
        if inst.pidfd is None:
            return     # reaped already in this turn (the sweep)
        if not inst.child:
            self.rt.loop.remove(inst.pidfd)   # stays readable (not ours to reap): no spin
        # booked with the others that are readable in this loop turn (a stop all: thousands),
        # from this turn's timers (a call_later(0) made now runs before the next select)
        if not self._ready:
            self.rt.loop.call_later(0, self._reap_ready)
        self._ready[inst] = inst.pidfd

    def _reap_ready(self) -> None:
        with collector_paused():
            self._reap(self._ready)

    def _reap(self, ready: dict[Instance, int]) -> None:
        self._ready = {}
        done: list[tuple[Instance, core.ExitStatus]] = []
        adopted: list[Instance] = []
        for inst, pidfd in ready.items():
            if inst.pidfd != pidfd:
                continue     # reaped meanwhile (the sweep), perhaps spawned again
            if not inst.child:
                adopted.append(inst)
                continue
            try:
                res = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
            except ChildProcessError:    # not ours to reap after all: as an adopted one
                self.rt.loop.remove(pidfd)
                adopted.append(inst)
                continue
            except OSError:              # no P_PIDFD (Linux < 5.4)
                self.reap()
                continue
            if res is not None and res.si_pid:
                done.append((inst, exit_status_from_wait(res.si_code, res.si_status, "waitid")))
        learn = self._adopted_exits(adopted, done) if adopted else []
        self._exited_many(done)
        if learn:
            self.rt.loop.call_later(0.01, lambda: self._learn_status(learn, 1))

    def _sweep_soon(self) -> None:
        if not self._sweeping:
            self._sweeping = True
            self.rt.loop.call_later(0, self._sweep)

    def _sweep(self) -> None:
        self._sweeping = False
        self.reap()

    def reap(self) -> None:
        """Reap every exited child: our workers, and orphans reparented to us (PID 1)."""
        done: list[tuple[Instance, core.ExitStatus]] = []
        while True:
            try:
                res = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                break
            if res is None or res.si_pid == 0:
                break
            inst = self.by_pid.get(res.si_pid)
            if inst is None or not inst.child:
                logger.debug(f"reaped pid {res.si_pid} (not a worker)")
                continue
            done.append((inst, exit_status_from_wait(res.si_code, res.si_status, "waitid")))
        self._exited_many(done)

    def _adopted_exits(self, insts: list[Instance], done: list[tuple[Instance, core.ExitStatus]]
                       ) -> list[tuple[Instance, int]]:
        """Adopted processes ended (the ones of one loop turn): the core hears at once (no more
        stop escalations for a process that is gone); their statuses are added to done. Each
        one's status: the worker's exit record if it wrote one, else PIDFD_INFO_EXIT -- which
        appears only once its parent (init) has reaped it, so the ones without are returned
        (with their pidfd, taken from the instance) to be looked for again
        (``_learn_status``) and, when found, reported as ExitStatusLearned.

        Only a worker that attached to its block (published its pid: both worker libraries do
        before anything else, and never clear it) can have written an exit record; the status
        pages of the others are looked at in one batch (attached_many), not one checked read
        each. A page whose pid word is 0 is taken as "no record"."""
        lib = attached_many(insts)
        learn: list[tuple[Instance, int]] = []
        for inst in insts:
            rec = inst.block.read_exit() if inst in lib and inst.block is not None else None
            status = exit_status_from_record(rec) if rec is not None else None
            if status is None and inst.pidfd is not None:
                status = pidfd_exit_status(inst.pidfd)
                if status is None:        # its pidfd is kept for that, not closed (no dup:
                    learn.append((inst, inst.pidfd))   # a batch of dups could run out of fds)
                    inst.pidfd = None     # (off the loop already: _on_pidfd)
            done.append((inst, status or core.ExitStatus(source="unknown")))
        return learn

    def _learn_status(self, waiting: list[tuple[Instance, int]], tries: int) -> None:
        """PIDFD_INFO_EXIT of adopted processes whose status was not known when they ended,
        looked for again (all the exits of one loop turn on one timer) 10 ms, 20 ms, ... 1.28 s
        after one another; each pidfd is closed once its status is found or given up on."""
        found: list[tuple[Instance, core.Event]] = []
        left: list[tuple[Instance, int]] = []
        for inst, pidfd in waiting:
            status = pidfd_exit_status(pidfd)
            if status is None and tries < 8:
                left.append((inst, pidfd))
                continue
            os.close(pidfd)
            if status is not None:
                found.append((inst, core.ExitStatusLearned(self.rt.now(), status)))
        if left:
            self.rt.loop.call_later(0.01 * 2 ** tries, lambda: self._learn_status(left, tries + 1))
        if found:
            self.rt.dispatch_all(found)

    def _exited_many(self, exits: list[tuple[Instance, core.ExitStatus]]) -> None:
        ends: list[Ending] = []
        for inst, status in exits:
            pid = inst.st.pid
            if pid is not None:
                self.by_pid.pop(pid, None)
            self.rt.release_process(inst)
            ends.append((inst, pid, self._report(inst, status), status))
        # the core hears of each exit once the whole tree is gone
        self.rt.trees.end_many(ends)

    def _report(self, inst: Instance, status: core.ExitStatus) -> Callable[[], None]:
        return lambda: self.rt.dispatch(inst, core.Exited(self.rt.now(), status))
