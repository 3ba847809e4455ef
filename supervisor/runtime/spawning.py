"""Spawning: the queue of instances the core asked to spawn, worked off a slice per loop turn,
and one spawn (control block, process, pidfd, log rotation watch) per instance."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections import deque
from typing import TYPE_CHECKING

from supervisor import core, safefs
from supervisor.config import WorkerConfig
from supervisor.core import Event, State
from supervisor.runtime.instance import Instance
from supervisor.spawn import SpawnRequest, spawn
from worker import block as blk

if TYPE_CHECKING:
    from supervisor.runtime.runtime import Runtime

SPAWN_SLICE = 0.005       # seconds of spawning per loop turn (see Spawner.drain)


class Spawner:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._queue: deque[Instance] = deque()
        self._scheduled = False

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
            inst = self._queue.popleft()
            if inst.st.state is State.STOPPING and inst.st.pid is None:
                event: Event = core.SpawnFailed(rt.now(), "stopped before it was spawned")
            else:
                event = self._spawn(inst, rt.now())
            rt.dispatch(inst, event)
            if rt.now() >= end:
                break
        if self._queue:
            self._schedule()

    def _spawn(self, inst: Instance, now: float) -> Event:
        """Start the process of inst; returns what happened (Spawned or SpawnFailed)."""
        rt = self.rt
        rt.release_process(inst)
        name = blk.shm_name(rt.config.supervisor.block_prefix, inst.name)
        inst.incarnation += 1
        try:
            try:
                block = blk.ControlBlock.create(name, slot=inst.index, supervisor_pid=os.getpid(),
                                                epoch=rt.epoch)
            except FileExistsError:
                blk.unlink_name(name)
                block = blk.ControlBlock.create(name, slot=inst.index, supervisor_pid=os.getpid(),
                                                epoch=rt.epoch)
        except (OSError, blk.BlockError) as e:
            return core.SpawnFailed(now, f"control block {name}: {e}")
        cfg = inst.cfg
        req = SpawnRequest(inst.name, list(cfg.command), cfg.directory, dict(cfg.environment),
                           cfg.user, inst.stdout_path, inst.stderr_path, name,
                           rt.readiness.notify_path, cfg.group)
        try:
            with rt.trees.spawning(inst):
                popen = spawn(req)
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
            block.close()
            block.unlink()
            return core.SpawnFailed(now, describe_spawn_error(cfg.command, e))
        inst.popen, inst.block, inst.child = popen, block, True
        pid = popen.pid
        # gone already (ProcessLookupError)? the pidfd below still tells us about the exit
        with contextlib.suppress(ProcessLookupError):
            block.set_spawned(pid, blk.proc_start_ticks(pid), inst.incarnation,
                              config_hash(cfg))
        rt.reaper.watch(inst, pid, os.pidfd_open(pid))
        rt.watch_logs(inst)
        return core.Spawned(now, pid)


def config_hash(cfg: WorkerConfig) -> int:
    """A stable 63-bit digest of a worker's config, kept in its block: after a daemon restart,
    a differing hash means the config changed while the daemon was down. numprocs is left
    out: adding or removing instances leaves the others alone."""
    hit = _HASHES.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return hit[1]
    # defaults left out: a new config key with a default does not restart every worker
    data = cfg.model_dump_json(exclude={"numprocs"}, exclude_defaults=True).encode()
    value = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
    _HASHES[id(cfg)] = (cfg, value)    # configs are frozen: hash each object once
    return value


_HASHES: dict[int, tuple[WorkerConfig, int]] = {}


def describe_spawn_error(argv: tuple[str, ...] | list[str], e: BaseException) -> str:
    if isinstance(e, safefs.UnsafePathError):
        return f"refusing its output file {e}"
    if isinstance(e, FileNotFoundError):
        return f"cannot execute {argv[0]!r}: no such file or directory (check command and PATH)"
    if isinstance(e, PermissionError):
        return f"cannot execute {argv[0]!r}: permission denied"
    if isinstance(e, NotADirectoryError):
        return f"cannot start in its directory: {e}"
    return f"cannot start {argv[0]!r}: {e}"
