"""A worker is its whole process tree: spawning into it, signalling it, ending it.

With cgroups (cgroups.py) the tree is the instance's cgroup: signals go to every member (a
double-forked daemon included), SIGKILL is ``cgroup.kill``, and the tree is gone when the
cgroup is no longer populated. Without, it is the process group the worker leads (every worker
starts in a session of its own), and whatever forked itself out of the group is out of reach.

Rule: when the leader of a tree exits, whatever is left of the tree is killed and waited for
before the core hears ``Exited`` — so an instance counts as stopped only once its whole tree
is gone, and a restart never runs beside the previous incarnation's leftovers (as systemd
does for a service's cgroup). One log line names the leftovers.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from loguru import logger

from supervisor import core
from supervisor._spawn import HAVE_CGROUP
from supervisor.fds import is_exhausted
from supervisor.loop import Timer
from supervisor.runtime.cgroups import CgroupTree, Remover
from supervisor.runtime.foreground import daemonized_hint
from supervisor.runtime.instance import Instance
from supervisor.runtime.procstats import (
    PROCS_LIMIT,
    Stats,
    close_fds,
    read_procs,
    read_stats,
    sole_members,
)
from worker.published import clean_text

if TYPE_CHECKING:
    from supervisor.runtime.runtime import Runtime

_SIGNAL_SLICE = 0.005     # seconds of a mass stop's signals per loop turn

# (an instance whose leader exited, the leader's pid, what to call once its tree is gone, how
# the leader exited)
Ending = tuple[Instance, int | None, Callable[[], None], core.ExitStatus | None]

_KILL_WAIT = 5.0         # seconds to wait for a killed tree to be gone before giving up


def _describe(pids: list[int]) -> str:
    """'PID (name), ...'. A process names itself (prctl PR_SET_NAME), so its name is hostile:
    an escape sequence in it went into the log, status and events, to the operator's
    terminal. Made printable like a worker's status text."""
    shown = []
    for pid in pids[:5]:
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                name = clean_text(f.read(64).removesuffix(b"\n"))
            shown.append(f"{pid} ({name})")
        except OSError:
            shown.append(str(pid))
    more = f" and {len(pids) - 5} more" if len(pids) > 5 else ""
    return ", ".join(shown) + more


class Trees:
    def __init__(self, rt: Runtime, enabled: bool) -> None:
        self.rt = rt
        self._later: list[tuple[Instance, int, int]] | None = None   # to signal (batch)
        self._queued: deque[tuple[Instance, int, int]] = deque()    # ... in slices
        self._slice: Timer | None = None
        self.cgroups: CgroupTree | None = None
        if not enabled:
            self.why = "off in the config (supervisor.cgroups: false)"
        else:
            self.cgroups, self.why = CgroupTree.setup(rt.config.supervisor.block_prefix)
        self._remover = Remover(self.cgroups, logger.warning) if self.cgroups is not None else None
        if self.cgroups is not None:
            logger.info(f"process trees: one cgroup per instance under {self.cgroups.dir}")
        else:
            logger.info(f"process trees: process groups only ({self.why})")

    @contextlib.contextmanager
    def spawning(self, inst: Instance) -> Iterator[int]:
        """Around the spawn of inst's process, which is born in the instance's cgroup: yields
        the cgroup's directory fd for clone3 (CLONE_INTO_CGROUP), or -1 (no cgroup; or, where
        clone3 cannot take one, the daemon itself is in the cgroup for the duration). The fd
        is closed afterwards: the daemon keeps no fd per worker but its pidfd."""
        cg = self.cgroups
        inst.cgroup = None
        if cg is None:
            yield -1
            return
        fd, ctx = -1, None
        try:
            if self._remover is not None:
                self._remover.claim(cg.path(inst.name))     # not removed under the spawn
            if HAVE_CGROUP:
                path, fd = cg.open_dir(inst.name)
            else:
                path = cg.prepare(inst.name)
                ctx = cg.entered(path)
                ctx.__enter__()
        except OSError as e:
            if is_exhausted(e):
                raise                   # the spawn fails, and says why
            logger.warning(f"{inst.name} cannot use its cgroup ({e}); process group only")
            yield -1
            return
        try:
            inst.cgroup = path
            yield fd
        finally:
            if fd >= 0:
                os.close(fd)
            if ctx is not None:
                ctx.__exit__(None, None, None)

    def adopt(self, inst: Instance, pid: int, inside: bool | None = None) -> None:
        """inst's adopted process: its tree is the instance's cgroup if it is in it
        (``inside``: already known)."""
        cg = self.cgroups
        if inside is None:
            inside = cg is not None and cg.contains(inst.name, pid)
        inst.cgroup = cg.path(inst.name) if cg is not None and inside else None

    def signal(self, inst: Instance, signum: int) -> None:
        pid = inst.st.pid
        if pid is None or inst.pidfd is None:
            return
        if self._later is not None:
            self._later.append((inst, pid, signum))
            return
        sent = self._signal_group(inst, pid, signum)
        if self.cgroups is not None and inst.cgroup is not None:
            self.cgroups.signal(inst.cgroup, signum, sent)

    def _signal_group(self, inst: Instance, pid: int, signum: int) -> int:
        """signum to the process group inst's leader heads; the leader's pid if it was sent
        (pgid == pid: we started it with setsid, and a session leader cannot leave its
        group), else 0."""
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            return 0
        except PermissionError as e:
            logger.error(f"{inst.name} cannot send signal {signum} to pid {pid}: {e}")
            return 0
        return pid

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Signals to many trees (a stop all), sent once the block ends as one walk, a slice
        per loop turn (_SIGNAL_SLICE): in each, every process group first, then one batched
        read of the cgroups' members (procstats) for the rest of each tree (a tree of one
        process, the common case, needs nothing more).

        Why slices: each signal wakes a process that then exits, and the kernel's exit work
        (~0.2 ms of CPU per process here) outweighs the daemon's part. 10,000 signals at once
        make 10,000 runnable processes that leave the loop a sliver of the CPU until they are
        all gone, and the loop's bookkeeping of their exits then runs alone, after. A slice
        per turn lets the loop book the exits of the previous slices meanwhile. Each signal
        still goes out within a few turns of the request, to a process that is still ours
        (not reaped: its pid cannot have been reused); the stop's timers count from the
        request, as they always did."""
        self._later = []
        try:
            yield
        finally:
            later, self._later = self._later, None
            self._queued.extend(later)
            if self._queued and self._slice is None:
                self._send_slice()

    def _send_slice(self) -> None:
        # the slice's time bounds the gathering of its chunk, and the chunk is sent after:
        # gathering is cheap (10,000 in a few ms), so a stop of that size goes out as one
        # burst; sending 64 at a time within the slice spread a stop all over many long
        # turns and finished later
        self._slice = None
        end = self.rt.now() + _SIGNAL_SLICE
        chunk: list[tuple[Instance, int, int]] = []
        while self._queued:
            inst, pid, signum = self._queued.popleft()
            if inst.pidfd is None or inst.st.pid != pid:
                continue                # reaped since (its pid is not ours any more)
            chunk.append((inst, pid, signum))
            if len(chunk) % 64 == 0 and self.rt.now() >= end:
                break
        self._send(chunk)
        if self._queued:
            self._slice = self.rt.loop.call_later(0, self._send_slice)   # the next turn

    def _send(self, later: list[tuple[Instance, int, int]]) -> None:
        sent = [self._signal_group(inst, pid, signum) for inst, pid, signum in later]
        cg = self.cgroups
        if cg is None:
            return
        prefix = cg.dir + "/"
        batch: list[tuple[str, int, int]] = []       # (name under cg.dir, signum, sent)
        for (inst, _pid, signum), leader in zip(later, sent, strict=True):
            path = inst.cgroup
            if path is None:
                continue
            if (signum == signal.SIGKILL and cg.has_kill) or not path.startswith(prefix):
                cg.signal(path, signum, leader)       # cgroup.kill, or not where we read
            else:
                batch.append((path[len(prefix):], signum, leader))
        if not batch:
            return
        procs = read_procs(cg.dir, [name for name, _s, _l in batch])
        for (name, signum, leader), raw in zip(batch, procs, strict=True):
            if not raw or raw == b"%d\n" % leader:
                continue                # no one left, or the leader alone (it has it)
            if isinstance(raw, int) or len(raw) >= PROCS_LIMIT:
                cg.signal(prefix + name, signum, leader)   # unreadable here, or truncated
                continue
            for member in raw.split():
                if member.isdigit() and int(member) != leader:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(member), signum)

    def end(self, inst: Instance, leader: int | None, then: Callable[[], None],
            status: core.ExitStatus | None = None) -> None:
        """The leader exited: kill what is left of its tree, then call ``then`` once the tree
        is gone (or after _KILL_WAIT, with a warning). ``status``: how it exited, to tell a
        program that daemonized itself (foreground.py)."""
        self.end_many([(inst, leader, then, status)])

    def end_many(self, ends: Sequence[Ending]) -> None:
        """``end`` of many trees whose leaders exited (the exits of one loop turn): their
        cgroups' members are read in one batch (procstats); an empty one (the common case)
        is done at once, any other takes ``_end_one``."""
        cg = self.cgroups
        prefix = cg.dir + "/" if cg is not None else ""
        batch: list[tuple[Ending, str]] = []
        for item in ends:
            path = item[0].cgroup
            if cg is not None and path is not None and path.startswith(prefix):
                batch.append((item, path[len(prefix):]))
            else:
                self._end_one(*item)
        if not batch:
            return
        assert cg is not None
        procs = read_procs(cg.dir, [name for _item, name in batch])
        empty: list[str] = []
        try:
            for (item, name), raw in zip(batch, procs, strict=True):
                inst, _leader, then, status = item
                if raw and not isinstance(raw, int):
                    self._end_one(*item)       # someone is left (read again, in full, there)
                    continue
                # empty, or unreadable (as CgroupTree.members: nothing to kill there)
                self._daemonized(inst, status, None)
                then()
                empty.append(prefix + name)
        finally:
            self._remove_later(*empty)

    def _end_one(self, inst: Instance, leader: int | None, then: Callable[[], None],
                 status: core.ExitStatus | None) -> None:
        cg, path = self.cgroups, inst.cgroup
        if cg is not None and path is not None:
            left = cg.members(path)
            self._daemonized(inst, status, _describe(left) if left else None)
            if not left:
                then()
                self._remove_later(path)
                return
            logger.warning(f"{inst.name} killing what its exited leader left in its cgroup: "
                           f"{_describe(left)}")
            cg.signal(path, signal.SIGKILL)
            self._wait_empty(inst, path, then, self.rt.now() + _KILL_WAIT, 0.001)
            return
        if leader is not None:
            try:
                os.killpg(leader, 0)
            except (ProcessLookupError, PermissionError):
                self._daemonized(inst, status, None)
            else:
                self._daemonized(inst, status, f"processes in its process group {leader}")
                logger.warning(f"{inst.name} killing what its exited leader left in its "
                               f"process group {leader}")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(leader, signal.SIGKILL)
        then()

    def _daemonized(self, inst: Instance, status: core.ExitStatus | None,
                    left: str | None) -> None:
        """An exit 0 while STARTING (within start_seconds) that left processes: say that the
        program must run in the foreground (kept for status in inst.note)."""
        st = inst.st
        inst.note = None
        if status is None or status.code != 0 or st.state is not core.State.STARTING or (
                st.started_at is None):
            return
        hint = daemonized_hint(inst.cfg.argv(inst.worker, inst.index),
                               self.rt.now() - st.started_at, left)
        if hint is not None:
            inst.note = hint
            logger.error(f"{inst.name} {hint}")

    def _wait_empty(self, inst: Instance, path: str, then: Callable[[], None], deadline: float,
                    delay: float) -> None:
        cg = self.cgroups
        assert cg is not None
        if not cg.populated(path):
            then()
            self._remove_later(path)
            return
        if self.rt.now() >= deadline:
            logger.error(f"{inst.name} processes still alive {_KILL_WAIT:g} s after SIGKILL in "
                         f"{path}: {_describe(cg.members(path))}; counting it as exited")
            then()
            return
        self.rt.loop.call_later(delay, lambda: self._wait_empty(
            inst, path, then, deadline, min(delay * 2, 0.1)))

    def _remove_later(self, *paths: str) -> None:
        """rmdir empty instance cgroups soon, off the loop (Remover). One that has a process
        again by then (a restart) stays: rmdir refuses it."""
        if self._remover is not None:
            self._remover.add(list(paths))

    def close(self) -> None:
        """Remove the empty instance cgroups and their parent (not the ones with processes:
        those live on for the next daemon to adopt)."""
        close_fds()
        cg = self.cgroups
        if cg is None:
            return
        if self._remover is not None:
            self._remover.close()
        with contextlib.suppress(OSError):
            for entry in os.scandir(cg.dir):
                if entry.is_dir(follow_symlinks=False):
                    cg.remove(entry.path)
            cg.remove(cg.dir)

    def stats(self, inst: Instance) -> Stats | None:
        return self.stats_many([inst])[0]

    def stats_many(self, insts: Sequence[Instance]) -> list[Stats | None]:
        """What status shows of each instance's process (None without one): its tree's
        (cgroups) or its own. Batched (procstats): one /proc/PID/stat read per process and,
        with cgroups, one peek at cgroup.procs; a tree of more than one process, or with the
        memory controller, takes CgroupTree.stats (its cgroup's own counters)."""
        out: list[Stats | None] = [None] * len(insts)
        cg = self.cgroups
        prefix = cg.dir + "/" if cg is not None else ""
        cut = len(prefix)
        ks: list[int] = []                  # the rows read in the batch, their pids, cgroups
        pids: list[int] = []
        names: list[str | None] = []
        slow: list[tuple[int, str]] = []
        for k, i in enumerate(insts):
            if (pid := i.pid) is None:
                continue
            path = i.cgroup
            if cg is None or path is None:
                names.append(None)
            elif cg.has_memory or not path.startswith(prefix):
                slow.append((k, path))
                continue
            else:
                names.append(path[cut:])
            ks.append(k)
            pids.append(pid)
        stats = read_stats(pids)
        treed = [n for n in names if n is not None]
        # after the stat lines (see procstats: the PID cannot have changed hands in between)
        alone = iter(sole_members(cg.dir, treed, [p for p, n in zip(pids, names, strict=True)
                                                   if n is not None]) if cg and treed else ())
        for k, name, got in zip(ks, names, stats, strict=True):
            if name is None:
                if isinstance(got, tuple):
                    out[k] = {"processes": None, "cpu_usec": got[0], "memory": got[2],
                              "oom_kills": None}
            elif next(alone) and isinstance(got, tuple):
                out[k] = {"processes": 1, "cpu_usec": got[1], "memory": got[2],
                          "oom_kills": None}
            else:
                slow.append((k, prefix + name))
        for k, path in slow:
            assert cg is not None
            out[k] = cg.stats(path)
        return out
