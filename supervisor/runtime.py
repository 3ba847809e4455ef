"""The runtime: carries out the pure core's actions with real processes, pidfds and timers.

One ``Instance`` per configured process ("web:0"). Every fact (a spawn, an exit, a timer, a
ready report, a request) is turned into a core event and fed through ``dispatch``, which runs
``core.step`` and executes the actions it returns. Nothing here decides policy; it only does
I/O and reports what happened.

Exits: a pidfd per process is registered with the loop (readable when the process exits).
Children are reaped with waitid(P_ALL) in one place (``_reap``), which also reaps orphaned
zombies when the daemon is a container's PID 1. Adopted processes (not our children) get
their status from the worker's exit record in the control block, else from PIDFD_INFO_EXIT
(Linux ≥ 6.15), else "unknown".
"""

from __future__ import annotations

import array
import errno
import fcntl
import hashlib
import os
import secrets
import signal
import socket
import struct
import subprocess
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from loguru import logger

from supervisor import core
from supervisor.config import Config, WorkerConfig
from supervisor.core import Event, InstanceState, State, TimerKind
from supervisor.logs import Rotator
from supervisor.loop import Loop, Timer
from supervisor.spawn import SpawnRequest, spawn
from worker import block as blk

GONE = (State.STOPPED, State.EXITED, State.FATAL)
SPAWN_SLICE = 0.005       # seconds of spawning per loop turn (see _drain_spawns)

# struct pidfd_info (VER0, 64 bytes) and ioctl PIDFD_GET_INFO = _IOWR(0xFF, 11, 64)
_PIDFD_INFO = struct.Struct("QQ11Ii")
_PIDFD_GET_INFO = 0xC0000000 | (_PIDFD_INFO.size << 16) | (0xFF << 8) | 11
_PIDFD_INFO_EXIT = 1 << 3


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
    popen: subprocess.Popen[bytes] | None = None
    child: bool = True             # our child (reaped by waitid) or adopted from another daemon
    incarnation: int = 0
    timers: dict[TimerKind, Timer] = field(default_factory=dict)
    hb_timer: Timer | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None
    removed: bool = False          # gone from the config: forget it once stopped
    waiters: list[Waiter] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.st.pid if self.st.state not in GONE else None


@dataclass(eq=False, slots=True)
class Waiter:
    """A client waiting until every instance in `pending` satisfies `done`."""

    pending: set[Instance]
    done: Callable[[Instance], bool]
    finish: Callable[[], None]


def exit_status_from_wait(si_code: int, si_status: int, source: str) -> core.ExitStatus:
    if si_code == os.CLD_EXITED:
        return core.ExitStatus(code=si_status, source=source)
    return core.ExitStatus(signal=si_status, source=source)


def exit_status_from_record(rec: blk.ExitRecord) -> core.ExitStatus:
    if rec.status < 0:
        return core.ExitStatus(signal=-rec.status, source="worker")
    return core.ExitStatus(code=rec.status, source="worker")


class Runtime:
    def __init__(self, loop: Loop, config: Config, notify_path: str | None = None) -> None:
        self.loop = loop
        self.config = config
        self.epoch = secrets.randbits(63)
        self.instances: dict[str, Instance] = {}
        self.by_pid: dict[int, Instance] = {}
        self.rotator = Rotator(loop)
        self.on_change: Callable[[], None] = lambda: None   # e.g. systemd STATUS=
        self._queue: deque[tuple[Instance, Event]] = deque()
        self._dispatching = False
        self._spawn_queue: deque[Instance] = deque()
        self._spawn_scheduled = False
        self._deferred: list[Instance] = []      # start requests waiting on depends_on
        self._notify_sock: socket.socket | None = None
        self.notify_path = notify_path
        if notify_path:
            self._open_notify_socket(notify_path)
        loop.add_signal_handler(signal.SIGCHLD, lambda _s: self._reap())

    # -- instances --------------------------------------------------------------------------
    def make_instances(self, name: str, cfg: WorkerConfig) -> list[Instance]:
        made = []
        policy = cfg.policy(name)
        for index in range(cfg.numprocs):
            inst_name = f"{name}:{index}"
            if inst_name in self.instances:
                continue
            out, err = cfg.log_paths(name, index)
            inst = Instance(inst_name, name, index, cfg, policy, stdout_path=out,
                            stderr_path=err)
            self.instances[inst_name] = inst
            made.append(inst)
        return made

    def select(self, targets: Iterable[str]) -> tuple[list[Instance], list[str]]:
        """Instances named by targets ("all", "web", "web:0"), and the unknown targets."""
        chosen: dict[str, Instance] = {}
        unknown: list[str] = []
        for t in targets:
            if t == "all":
                chosen.update(self.instances)
            elif t in self.instances:
                chosen[t] = self.instances[t]
            else:
                found = {n: i for n, i in self.instances.items() if i.worker == t}
                if not found:
                    unknown.append(t)
                chosen.update(found)
        return sorted(chosen.values(), key=lambda i: (i.worker, i.index)), unknown

    # -- the dispatch loop --------------------------------------------------------------------
    def now(self) -> float:
        return self.loop.clock()

    def dispatch(self, inst: Instance, event: Event) -> None:
        self._queue.append((inst, event))
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._queue:
                inst, event = self._queue.popleft()
                old = inst.st.state
                try:
                    inst.st, actions = core.step(inst.st, event, inst.policy)
                except core.TransitionError as e:
                    logger.error(f"{inst.name} {e} (event ignored)")
                    continue
                for action in actions:
                    self._execute(inst, action, event.now)
                if inst.st.state is not old:
                    self._on_transition(inst, old)
        finally:
            self._dispatching = False

    def _execute(self, inst: Instance, action: core.Action, now: float) -> None:
        match action:
            case core.Spawn():
                self._spawn_queue.append(inst)
                if not self._spawn_scheduled:
                    self._spawn_scheduled = True
                    self.loop.call_later(0, self._drain_spawns)
            case core.PostStop(deadline=deadline):
                if inst.block is not None:
                    inst.block.post_command(blk.CMD_STOP_GRACEFUL, int(deadline * 1e9))
            case core.Signal(signum=signum, group=group):
                self._signal(inst, signum, group)
            case core.ArmTimer(kind=kind, delay=delay):
                self.arm_timer(inst, kind, now + delay)
            case core.CancelTimer(kind=kind):
                self._cancel_timer(inst, kind)
            case core.Log(level=level, message=message):
                logger.log(level, f"{inst.name} {message}")

    def arm_timer(self, inst: Instance, kind: TimerKind, when: float) -> None:
        self._cancel_timer(inst, kind)

        def fire() -> None:
            inst.timers.pop(kind, None)   # fired: not kept (a cancelled one never fires)
            self.dispatch(inst, core.TimerFired(self.now(), kind))

        inst.timers[kind] = self.loop.call_at(when, fire)

    def _cancel_timer(self, inst: Instance, kind: TimerKind) -> None:
        t = inst.timers.pop(kind, None)
        if t is not None:
            t.cancel()

    def _on_transition(self, inst: Instance, old: State) -> None:
        new = inst.st.state
        if new is State.RUNNING:
            self._arm_heartbeat(inst, inst.cfg.heartbeat_timeout)
            self._start_deferred()
        elif inst.hb_timer is not None:
            inst.hb_timer.cancel()
            inst.hb_timer = None
        for w in list(inst.waiters):
            if w.done(inst):
                inst.waiters.remove(w)
                w.pending.discard(inst)
                if not w.pending:
                    w.finish()
        if new in GONE and inst.removed:
            self._forget(inst)
        self.on_change()

    # -- waiting for instances (replies to the control socket) --------------------------------
    def wait_for(self, insts: Iterable[Instance], done: Callable[[Instance], bool],
                 finish: Callable[[], None]) -> None:
        pending = {i for i in insts if not done(i)}
        if not pending:
            finish()
            return
        w = Waiter(pending, done, finish)
        for i in pending:
            i.waiters.append(w)

    # -- starting -----------------------------------------------------------------------------
    def request_start(self, insts: Iterable[Instance]) -> None:
        for inst in insts:
            if self._deps_ready(inst):
                self.dispatch(inst, core.StartRequested(self.now()))
            elif inst not in self._deferred:
                self._deferred.append(inst)
                missing = ", ".join(d for d in inst.cfg.depends_on if not self._worker_ready(d))
                logger.info(f"{inst.name} waiting for {missing} to be RUNNING before it starts")

    def _worker_ready(self, worker: str) -> bool:
        return all(i.st.state is State.RUNNING for i in self.instances.values()
                   if i.worker == worker)

    def _deps_ready(self, inst: Instance) -> bool:
        return all(self._worker_ready(d) for d in inst.cfg.depends_on)

    def _start_deferred(self) -> None:
        ready = [i for i in self._deferred if self._deps_ready(i)]
        for inst in ready:
            self._deferred.remove(inst)
            if not inst.removed and inst.st.state in GONE and not inst.st.stop_requested:
                self.dispatch(inst, core.StartRequested(self.now()))

    def cancel_deferred(self, insts: Iterable[Instance]) -> None:
        for inst in insts:
            if inst in self._deferred:
                self._deferred.remove(inst)

    def _drain_spawns(self) -> None:
        """Spawn for about SPAWN_SLICE per loop turn (at least one process), so that exits,
        ready reports and supervisorctl wait at most that long even while 1,000 workers start.
        (A fixed batch of 16 held a request up to ~45 ms: one spawn costs ~2.7 ms here.)"""
        self._spawn_scheduled = False
        end = self.now() + SPAWN_SLICE
        while self._spawn_queue:
            inst = self._spawn_queue.popleft()
            if inst.st.state is State.STOPPING and inst.st.pid is None:
                event: Event = core.SpawnFailed(self.now(), "stopped before it was spawned")
            else:
                event = self._spawn(inst, self.now())
            self.dispatch(inst, event)
            if self.now() >= end:
                break
        if self._spawn_queue and not self._spawn_scheduled:
            self._spawn_scheduled = True
            self.loop.call_later(0, self._drain_spawns)

    def _spawn(self, inst: Instance, now: float) -> Event:
        """Start the process of inst; returns what happened (Spawned or SpawnFailed)."""
        self._close_process(inst)
        name = blk.shm_name(self.config.supervisor.block_prefix, inst.name)
        inst.incarnation += 1
        try:
            try:
                block = blk.ControlBlock.create(name, slot=inst.index, supervisor_pid=os.getpid(),
                                                epoch=self.epoch)
            except FileExistsError:
                blk.unlink_name(name)
                block = blk.ControlBlock.create(name, slot=inst.index, supervisor_pid=os.getpid(),
                                                epoch=self.epoch)
        except (OSError, blk.BlockError) as e:
            return core.SpawnFailed(now, f"control block {name}: {e}")
        cfg = inst.cfg
        req = SpawnRequest(inst.name, list(cfg.command), cfg.directory, dict(cfg.environment),
                           cfg.user, inst.stdout_path, inst.stderr_path, name, self.notify_path)
        try:
            popen = spawn(req)
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
            block.close()
            block.unlink()
            return core.SpawnFailed(now, describe_spawn_error(cfg.command, e))
        inst.popen, inst.block, inst.child = popen, block, True
        pid = popen.pid
        try:
            block.set_spawned(pid, blk.proc_start_ticks(pid), inst.incarnation,
                              config_hash(cfg))
        except ProcessLookupError:
            pass   # gone already: the pidfd below still tells us about the exit
        self.watch(inst, pid, os.pidfd_open(pid))
        for path, spec in {inst.stdout_path: cfg.log_config("stdout"),
                           inst.stderr_path: cfg.log_config("stderr")}.items():
            if path:
                self.rotator.watch(path, spec.max_bytes, spec.backups)
        return core.Spawned(now, pid)

    def watch(self, inst: Instance, pid: int, pidfd: int) -> None:
        inst.pidfd = pidfd
        self.by_pid[pid] = inst
        self.loop.add_reader(pidfd, lambda _m: self._on_pidfd(inst))

    # -- signals ------------------------------------------------------------------------------
    def _signal(self, inst: Instance, signum: int, group: bool) -> None:
        pid = inst.st.pid
        if pid is None or inst.pidfd is None:
            return
        try:
            if group:
                os.killpg(pid, signum)          # pgid == pid: we started it with setsid
            else:
                signal.pidfd_send_signal(inst.pidfd, signum)
        except ProcessLookupError:
            pass
        except PermissionError as e:
            logger.error(f"{inst.name} cannot send signal {signum} to pid {pid}: {e}")

    def send_signal(self, inst: Instance, signum: int) -> bool:
        """supervisorctl signal: to the worker process itself (verified through its pidfd)."""
        if inst.pidfd is None or inst.st.state in GONE:
            return False
        try:
            signal.pidfd_send_signal(inst.pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    # -- exits --------------------------------------------------------------------------------
    def _on_pidfd(self, inst: Instance) -> None:
        if inst.child:
            self._reap()
        else:
            self._adopted_exit(inst)

    def _reap(self) -> None:
        """Reap every exited child: our workers, and orphans reparented to us (PID 1)."""
        while True:
            try:
                res = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                return
            if res is None or res.si_pid == 0:
                return
            inst = self.by_pid.get(res.si_pid)
            if inst is None or not inst.child:
                logger.debug(f"reaped pid {res.si_pid} (not a worker)")
                continue
            status = exit_status_from_wait(res.si_code, res.si_status, "waitid")
            if inst.popen is not None:
                inst.popen.returncode = res.si_status   # keep subprocess from waiting on it
            self._exited(inst, status)

    def _adopted_exit(self, inst: Instance, tries: int = 0) -> None:
        """An adopted process ended. Its exit record (if the worker wrote one) comes first;
        PIDFD_INFO_EXIT appears only once its parent (init) has reaped it, so look again a
        few times before settling for "unknown"."""
        if inst.pidfd is not None and tries == 0:
            self.loop.remove(inst.pidfd)   # stays readable: don't spin on it
        rec = inst.block.read_exit() if inst.block is not None else None
        status = exit_status_from_record(rec) if rec is not None else None
        if status is None and inst.pidfd is not None:
            status = pidfd_exit_status(inst.pidfd)
            if status is None and tries < 8:     # 10 ms, 20 ms, ... 1.3 s in all
                self.loop.call_later(0.01 * 2 ** tries, lambda: self._adopted_exit(inst, tries + 1))
                return
        self._exited(inst, status or core.ExitStatus(source="unknown"))

    def _exited(self, inst: Instance, status: core.ExitStatus) -> None:
        pid = inst.st.pid
        if pid is not None:
            self.by_pid.pop(pid, None)
        self._close_process(inst)
        self.dispatch(inst, core.Exited(self.now(), status))

    def _close_process(self, inst: Instance, unlink: bool = True) -> None:
        """Forget the pidfd and the control block of a process that is gone (unlink=False:
        of one that lives on without us — the daemon exits or re-executes)."""
        if inst.pidfd is not None:
            self.loop.remove(inst.pidfd)
            os.close(inst.pidfd)
            inst.pidfd = None
        if inst.block is not None:
            inst.block.close()
            if unlink:
                inst.block.unlink()
            inst.block = None
        inst.popen = None
        for path in {inst.stdout_path, inst.stderr_path} - {None}:
            self.rotator.unwatch(path)  # type: ignore[arg-type]

    def _forget(self, inst: Instance) -> None:
        self.cancel_deferred([inst])
        for kind in list(inst.timers):
            self._cancel_timer(inst, kind)
        self.instances.pop(inst.name, None)

    # -- readiness and heartbeats -------------------------------------------------------------
    def _open_notify_socket(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                          | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._notify_sock = s
        self.loop.add_reader(s.fileno(), lambda _m: self._on_notify())

    def _on_notify(self) -> None:
        assert self._notify_sock is not None
        ucred = struct.Struct("iII")
        while True:
            try:
                _data, anc, _f, _a = self._notify_sock.recvmsg(
                    64, socket.CMSG_SPACE(ucred.size))
            except (BlockingIOError, InterruptedError):
                return
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, _uid, _gid = ucred.unpack(payload[:ucred.size])
                    inst = self.by_pid.get(pid)
                    if inst is not None:
                        self.check_ready(inst)

    def check_ready(self, inst: Instance) -> None:
        """The block is the truth; the datagram only tells us to look."""
        if inst.block is None or inst.st.state is not State.STARTING:
            return
        _seq, state = inst.block.ack
        if state in (blk.ST_READY, blk.ST_BUSY):
            self.dispatch(inst, core.ReadyReported(self.now()))

    def _arm_heartbeat(self, inst: Instance, timeout: float | None, at: float | None = None) -> None:
        if not timeout or inst.block is None:
            return
        if inst.hb_timer is not None:
            inst.hb_timer.cancel()
        when = at if at is not None else self.now() + timeout
        inst.hb_timer = self.loop.call_at(when, lambda: self._check_heartbeat(inst, timeout))

    def _check_heartbeat(self, inst: Instance, timeout: float) -> None:
        inst.hb_timer = None
        if inst.st.state is not State.RUNNING or inst.block is None:
            return
        now = self.now()
        hb_ns = inst.block.heartbeat_ns
        last = hb_ns / 1e9 if hb_ns else (inst.st.ready_at or now)
        if now - last > timeout:
            self.dispatch(inst, core.HeartbeatStale(now, now - last))
        else:
            self._arm_heartbeat(inst, timeout, at=last + timeout)

    # -- shutdown -----------------------------------------------------------------------------
    def close(self) -> None:
        for inst in self.instances.values():
            for kind in list(inst.timers):
                self._cancel_timer(inst, kind)
            self._close_process(inst, unlink=False)
        if self._notify_sock is not None:
            self.loop.remove(self._notify_sock.fileno())
            self._notify_sock.close()
            if self.notify_path:
                try:
                    os.unlink(self.notify_path)
                except FileNotFoundError:
                    pass
        self.rotator.close()


def config_hash(cfg: WorkerConfig) -> int:
    """A stable 63-bit digest of a worker's config, kept in its block: after a daemon restart,
    a differing hash means the config changed while the daemon was down. numprocs is left
    out: adding or removing instances leaves the others alone."""
    hit = _HASHES.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return hit[1]
    data = cfg.model_dump_json(exclude={"numprocs"}).encode()
    value = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
    _HASHES[id(cfg)] = (cfg, value)    # configs are frozen: hash each object once
    return value


_HASHES: dict[int, tuple[WorkerConfig, int]] = {}


def uses_library(inst: Instance) -> bool:
    """Whether the process attached to its control block (and so reads the control word)."""
    return inst.block is not None and inst.block.pid != 0


def describe_spawn_error(argv: tuple[str, ...] | list[str], e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return f"cannot execute {argv[0]!r}: no such file or directory (check command and PATH)"
    if isinstance(e, PermissionError):
        return f"cannot execute {argv[0]!r}: permission denied"
    if isinstance(e, NotADirectoryError):
        return f"cannot start in its directory: {e}"
    return f"cannot start {argv[0]!r}: {e}"


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
