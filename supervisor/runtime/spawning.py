"""Spawning: the queue of instances the core asked to spawn, worked off a slice per loop turn,
and one spawn (control block, output files, process, pidfd, log rotation watch) per instance.
The output files and control blocks of the next instances in the queue are made ahead on a
helper thread (outputs.py)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import weakref
from collections import deque
from typing import TYPE_CHECKING

from loguru import logger

from supervisor import core, fds, safefs
from supervisor.config import WorkerConfig
from supervisor.core import Event, State
from supervisor.logs import OutputFileError
from supervisor.runtime.instance import Instance
from supervisor.runtime.outputs import Outputs, owner_of
from supervisor.spawn import ChildSetupError, CredentialsError, SpawnRequest, credentials, spawn
from worker import block as blk
from worker.ctlpage import ControlBlock

if TYPE_CHECKING:
    from supervisor.runtime.runtime import Runtime

SPAWN_SLICE = 0.005       # seconds of spawning per loop turn (see Spawner.drain)


class Spawner:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._queue: deque[Instance] = deque()
        self._scheduled = False
        self.outputs = Outputs(make_block=lambda name, slot, uid, gid: create_block(
            name, slot, rt.epoch, uid, gid))

    def enqueue(self, inst: Instance) -> None:
        """Carry out the core's Spawn: soon, from the loop, then feed Spawned or SpawnFailed."""
        self._queue.append(inst)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.rt.loop.call_later(0, self.drain)

    def drain(self) -> None:
        """Spawn for about SPAWN_SLICE per loop turn (at least one process), so that exits,
        ready reports and supervisorctl wait at most that long even while 1,000 workers
        start."""
        self._scheduled = False
        rt = self.rt
        end = rt.now() + SPAWN_SLICE
        while self._queue:
            self.outputs.ahead(self._queue, self._cgroup_of, self._block_of)
            inst = self._queue.popleft()
            if inst.st.state is State.STOPPING and inst.st.pid is None:
                self.outputs.discard(inst)
                event: Event = core.SpawnFailed(rt.now(), "stopped before it was spawned")
            else:
                event = self._spawn(inst, rt.now())
            rt.dispatch(inst, event)
            if rt.now() >= end:
                break
        if self._queue:
            self.outputs.ahead(self._queue, self._cgroup_of, self._block_of)
            self._schedule()

    def close(self) -> None:
        self.outputs.close()

    def _cgroup_of(self, inst: Instance) -> str | None:
        cg = self.rt.trees.cgroups
        return cg.path(inst.name) if cg is not None else None

    def _block_of(self, inst: Instance) -> tuple[str, int] | None:
        """The block to make ahead for inst: only when it has none (a respawn's old block
        goes at its spawn, under the same name); a name that is refused is left to the
        spawn to report."""
        if inst.block is not None:
            return None
        try:
            return blk.shm_name(self.rt.block_prefix, inst.name), inst.index
        except ValueError:
            return None

    def _spawn(self, inst: Instance, now: float) -> Event:
        """Start the process of inst; returns what happened (Spawned or SpawnFailed)."""
        rt = self.rt
        rt.release_process(inst)
        name = blk.shm_name(rt.block_prefix, inst.name)
        inst.incarnation += 1
        cfg = inst.cfg
        try:   # the worker's uid and gid: its status page is its own, its ctl page its group's
            creds = credentials(cfg.user, cfg.group) if cfg.user is not None else None
        except CredentialsError as e:
            self.outputs.discard(inst)
            return core.SpawnFailed(now, describe_spawn_error(cfg.command, e))
        uid, gid = (creds.uid, creds.gid) if creds is not None else (None, None)
        try:
            block = (self.outputs.take_block(inst, (name, uid, gid))
                     or create_block(name, inst.index, rt.epoch, uid, gid))
        except BlockTaken as e:
            self.outputs.discard(inst)
            return core.SpawnFailed(now, str(e))
        except OSError as e:
            self.outputs.discard(inst)
            hint = (f" ({blk.SHM_DIR} is full)" if e.errno == errno.ENOSPC
                    else f" ({fds.exhausted_hint(e)})" if fds.is_exhausted(e) else "")
            return core.SpawnFailed(now, f"cannot create control block {name}: "
                                         f"{e.strerror or e}{hint}")
        # the config it runs, before the spawn: a daemon killed before the spawn is recorded
        # leaves a successor that finds the process by its environment (adopt.verify) and must
        # not take it for one of another config
        block.set_spawned(0, 0, inst.incarnation, config_hash(cfg))
        argv = cfg.argv(inst.worker, inst.index)
        # the files are opened here (or ahead, by self.outputs), not by spawn(): paths None
        req = SpawnRequest(inst.name, argv, cfg.directory, cfg.env(inst.worker, inst.index),
                           cfg.user, None, None, name, rt.readiness.notify_path, cfg.group,
                           cfg.umask)
        ends: list[int] = []
        sizes: tuple[int | None, int | None] = (None, None)
        try:
            req.stdout_fd, req.stderr_fd = rt.open_pipes(inst, ends)
            files = self.outputs.take(inst, (inst.stdout_path, inst.stderr_path),
                                      owner_of(uid, gid))
            ends.extend(files.fds())
            sizes = files.sizes
            if files.out is not None:
                req.stdout_fd = files.out
            if files.err is not None:
                req.stderr_fd = files.err
            with rt.trees.spawning(inst) as cgroup_fd:
                pid, pidfd = spawn(req, cgroup_fd)
        except (OSError, ValueError, KeyError) as e:
            self.outputs.discard(inst)       # if it failed before taking its files
            block.close()
            block.unlink()
            for pipe in inst.pipes:
                pipe.close()
            inst.pipes.clear()
            return core.SpawnFailed(now, describe_spawn_error(argv, e))
        finally:
            for fd in ends:
                os.close(fd)        # the child has its own copies
        inst.block, inst.child = block, True
        # gone already (ProcessLookupError)? the pidfd below still tells us about the exit
        with contextlib.suppress(ProcessLookupError):
            block.set_spawned(pid, blk.proc_start_ticks(pid), inst.incarnation,
                              config_hash(cfg), os.geteuid() if uid is None else uid, pid)
        rt.reaper.watch(inst, pid, pidfd)
        rt.watch_logs(inst, sizes)
        return core.Spawned(now, pid)


class BlockTaken(Exception):
    """The name of a control block is held by an object that is not ours and stays."""


def _describe(path: str) -> tuple[str, int] | None:
    """(kind, owner uid) of what is at path (never following a link), None if nothing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kinds = {stat.S_IFREG: "a file", stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symlink",
             stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
    return kinds.get(stat.S_IFMT(st.st_mode), "a device"), st.st_uid


def _remove_squatter(name: str) -> None:
    """Take the name back (root may remove anyone's entry in the sticky /dev/shm). Our own
    stale ctl page takes its status page with it."""
    path = blk.SHM_DIR + name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                with contextlib.suppress(OSError, blk.BlockError):
                    status = blk.check_header(name, os.pread(fd, blk.HEADER_SIZE, 0))
                    blk.unlink_name(status)
        finally:
            os.close(fd)
    try:
        os.unlink(path)
    except IsADirectoryError:
        with contextlib.suppress(OSError):
            os.rmdir(path)
    except OSError:
        pass


def _move_aside(name: str) -> None:
    """A directory at a block's name (which no unlink removes, and rmdir not when it holds
    something): renamed to a hidden name, left to its owner."""
    aside = f"/.squatted.{name[1:]}.{os.urandom(8).hex()}"
    with contextlib.suppress(OSError):
        os.rename(blk.SHM_DIR + name, blk.SHM_DIR + aside)
        logger.warning(f"{blk.SHM_DIR}{name} was taken by something that is not ours; moved "
                       f"it to {blk.SHM_DIR}{aside}")


def create_block(name: str, slot: int, epoch: int, uid: int | None,
                 gid: int | None) -> ControlBlock:
    """Create an instance's block. A name that exists already is taken back once (ours and
    stale, or planted by someone else); BlockTaken if it still cannot be had. OSError (e.g.
    ENOSPC) if the pages cannot be made."""
    try:
        return ControlBlock.create(name, slot=slot, supervisor_pid=os.getpid(), epoch=epoch,
                                   uid=uid, gid=gid)
    except FileExistsError:
        _remove_squatter(name)
    # Taken back, a name can be planted again before our O_EXCL create (a local user's loop
    # won that race 142 times in 20 restarts): the page is made under a name nobody can
    # guess and renamed over whatever is at the name (a directory is moved aside first).
    hidden = f"/.{name[1:]}.{os.urandom(8).hex()}.new"      # names are "/prefix.instance"
    block = ControlBlock.create(name, slot=slot, supervisor_pid=os.getpid(), epoch=epoch,
                                uid=uid, gid=gid, at=hidden)
    try:
        for _ in range(3):
            try:
                os.rename(blk.SHM_DIR + hidden, blk.SHM_DIR + name)
                return block
            except OSError as e:
                if e.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    break
                _move_aside(name)
    except BaseException:
        block.close()
        blk.unlink_name(hidden)
        blk.unlink_name(block.status_name)
        raise
    block.close()
    blk.unlink_name(hidden)
    blk.unlink_name(block.status_name)
    what = _describe(blk.SHM_DIR + name)
    held = f"{what[0]} owned by uid {what[1]}" if what else "something that comes back"
    raise BlockTaken(f"control block {name} is taken by {held} and cannot be removed; "
                     f"remove {blk.SHM_DIR}{name} by hand")


def config_hash(cfg: WorkerConfig) -> int:
    """A stable 63-bit digest of a worker's config, kept in its block: after a daemon restart,
    a differing hash means the config changed while the daemon was down. numprocs is left
    out: adding or removing instances leaves the others alone."""
    key = id(cfg)
    hit = _HASHES.get(key)
    if hit is not None and hit[0]() is cfg:
        return hit[1]
    # defaults left out: a new config key with a default does not restart every worker
    data = cfg.model_dump_json(exclude={"numprocs"}, exclude_defaults=True).encode()
    value = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
    # configs are frozen: each object hashed once. Held weakly, the entry going with its
    # config: a reload's replaced configs must not live on here, one set per reload
    _HASHES[key] = (weakref.ref(cfg, lambda _ref: _HASHES.pop(key, None)), value)
    return value


_HASHES: dict[int, tuple[weakref.ref[WorkerConfig], int]] = {}


def describe_spawn_error(argv: tuple[str, ...] | list[str], e: BaseException) -> str:
    if isinstance(e, OSError) and fds.is_exhausted(e):
        where = f" ({e.filename})" if e.filename else ""
        return f"cannot start {argv[0]!r}{where}: {fds.exhausted_hint(e)}"
    if isinstance(e, ChildSetupError):
        return str(e)
    if isinstance(e, safefs.UnsafePathError):
        return f"refusing its output file {e}"
    if isinstance(e, OutputFileError):
        return str(e)
    if isinstance(e, FileNotFoundError):
        return f"cannot execute {argv[0]!r}: no such file or directory (check command and PATH)"
    if isinstance(e, PermissionError):
        return f"cannot execute {argv[0]!r}: permission denied"
    if isinstance(e, NotADirectoryError):
        return f"cannot start in its directory: {e}"
    return f"cannot start {argv[0]!r}: {e}"
