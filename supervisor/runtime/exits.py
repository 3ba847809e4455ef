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
import resource
import select
import signal
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from loguru import logger

from supervisor import core
from supervisor.heap import collector_paused
from supervisor.loop import Timer
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
        if e.errno == errno.ENOTTY:         # no PIDFD_GET_INFO (Linux < 6.13): never learned
            LateStatus.supported = False
        elif e.errno not in (errno.EINVAL, errno.ESRCH):
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
        self.late = LateStatus(rt)
        rt.loop.add_signal_handler(signal.SIGCHLD, lambda _s: self._sweep_soon())

    def close(self) -> None:
        self.late.close()

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
            self.late.add(learn)

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
        (with their pidfd, taken from the instance) for LateStatus, which reports it as
        ExitStatusLearned once there is one.

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
                if status is None and LateStatus.supported:   # its pidfd is kept for that,
                    learn.append((inst, inst.pidfd))   # not closed (no dup: a batch of dups
                    inst.pidfd = None     # could run out of fds); off the loop already
            done.append((inst, status or core.ExitStatus(source="unknown")))
        return learn

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


class LateStatus:
    """The exit status of adopted processes that was not known when they ended: their parent
    (init) had not reaped them yet, and PIDFD_INFO_EXIT appears only once it has. A pidfd
    tells the reap by EPOLLHUP (its waiters are woken when the process is reaped), so the
    pidfds wait in one epoll set of their own, registered for nothing but what epoll always
    reports (EPOLLHUP, EPOLLERR) and edge-triggered: one event per process, at its reap, and
    the loop watches the set as one fd -- no polling. The set is read once no adopted exit
    has come for QUIET seconds (at most LATEST after the first one waiting): the statuses of
    a stop all are learned after its reply, not in the middle of its exits (the reaps come
    in the meantime, and the kernel keeps their events). A process not reaped within GIVE_UP
    seconds is let go (its status stays "unknown"), one timer per batch. Each pidfd is closed
    once its status is read or given up on. At most an eighth of the soft fd limit waits:
    a restart of adopted instances needs a pidfd for each new process while the old ones
    wait, and a late status is never worth a spawn that runs out of fds (the rest stay
    "unknown")."""

    QUIET = 0.5
    LATEST = 2.0
    GIVE_UP = 5.0             # > LATEST: a reap is read before its process is let go
    supported = True          # False once PIDFD_GET_INFO is known to be missing

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._ep: select.epoll | None = None
        self._waiting: dict[int, tuple[Instance, int]] = {}   # pidfd -> (instance, serial)
        self._serial = 0
        self._first: float | None = None     # the first add the set was not read after
        self._last = 0.0                     # ... and the last one
        self._resume: Timer | None = None    # the set is off the loop until then

    def add(self, items: list[tuple[Instance, int]]) -> None:
        """Watch the pidfds (the exits of one loop turn); they are ours to close now."""
        if self._ep is None:
            self._ep = select.epoll()
        now = self.rt.now()
        self._last = now
        if self._first is None:
            self._first = now
        if self._resume is None:          # off the loop until the exits pause
            self.rt.loop.remove(self._ep.fileno())
            self._resume = self.rt.loop.call_at(now + self.QUIET, self._watch)
        self._serial += 1
        batch: list[int] = []
        room = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 8 - len(self._waiting)
        for inst, pidfd in items:
            if len(batch) >= room:
                os.close(pidfd)
                continue
            try:
                self._ep.register(pidfd, select.EPOLLET)
            except OSError as e:      # ENOMEM, ENOSPC (max_user_watches): not learned
                logger.debug(f"{inst.name}: its exit status will not be learned ({e})")
                os.close(pidfd)
                continue
            self._waiting[pidfd] = (inst, self._serial)
            batch.append(pidfd)
        if batch:
            serial = self._serial
            self.rt.loop.call_later(self.GIVE_UP, lambda: self._give_up(batch, serial))

    def _watch(self) -> None:
        assert self._ep is not None and self._first is not None
        when = min(self._last + self.QUIET, self._first + self.LATEST)
        if when > self.rt.now():          # exits still coming
            self._resume = self.rt.loop.call_at(when, self._watch)
            return
        self._resume = None
        self._first = None
        self.rt.loop.add_reader(self._ep.fileno(), lambda _m: self._on_reaped())

    def _on_reaped(self) -> None:
        assert self._ep is not None
        found: list[tuple[Instance, core.Event]] = []
        for pidfd, _mask in self._ep.poll(0, 4096):
            got = self._waiting.pop(pidfd, None)
            if got is None:
                continue
            status = pidfd_exit_status(pidfd)
            os.close(pidfd)           # (which takes it out of the set)
            if status is not None:
                found.append((got[0], core.ExitStatusLearned(self.rt.now(), status)))
        if found:
            self.rt.dispatch_all(found)

    def _give_up(self, batch: list[int], serial: int) -> None:
        for pidfd in batch:
            got = self._waiting.get(pidfd)
            if got is not None and got[1] == serial:
                del self._waiting[pidfd]
                os.close(pidfd)

    def close(self) -> None:
        for pidfd in self._waiting:
            os.close(pidfd)
        self._waiting.clear()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._ep is not None:
            self.rt.loop.remove(self._ep.fileno())
            self._ep.close()
            self._ep = None
