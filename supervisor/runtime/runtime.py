"""The runtime: carries out the pure core's actions with real processes, pidfds and timers.

Every fact (a spawn, an exit, a timer, a ready report, a request) is turned into a core event
and fed through ``dispatch``, which runs ``core.step`` and executes the actions it returns.
Nothing here decides policy; it only does I/O and reports what happened.

The rest of the daemon (start-up, adoption, reload, re-exec, the control socket's handlers)
changes instances only through the public methods of ``Runtime``; the jobs live beside it:
``Spawner`` (spawning.py), ``Reaper`` (exits.py), ``Readiness`` (readiness.py).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shlex
import signal
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from loguru import logger

from supervisor import core
from supervisor.config import Config, WorkerConfig
from supervisor.core import NO_PROCESS, Event, InstanceState, State, TimerKind
from supervisor.heap import collector_paused
from supervisor.logs import LineBatch, Rotator
from supervisor.loop import Loop
from supervisor.names import ctl_command, instance_name, split_instance_name
from supervisor.runtime.console import Console
from supervisor.runtime.events import EventBus, publish_step
from supervisor.runtime.exits import EXIT_REASONS as EXIT_REASONS  # (re-exported)
from supervisor.runtime.exits import Reaper, exit_reason
from supervisor.runtime.instance import Instance, Waiter, attached_many, report_output
from supervisor.runtime.intent import ENDED, Intent
from supervisor.runtime.readiness import Readiness
from supervisor.runtime.spawning import Spawner
from supervisor.runtime.trees import Trees
from worker import block as blk


class Runtime:
    def __init__(self, loop: Loop, config: Config, notify_path: str | None = None) -> None:
        self.loop = loop
        self.config = config
        self.epoch = secrets.randbits(63)
        self._instances: dict[str, Instance] = {}
        self.instances: Mapping[str, Instance] = MappingProxyType(self._instances)
        # worker -> its instances by name, in index order: naming a worker, its readiness and
        # the start order look there, not through all instances (10,000 workers of one
        # instance each made boot scan 10,000 x 10,000)
        self._by_worker: dict[str, dict[str, Instance]] = {}
        self.rotator = Rotator(loop)
        self.lines = LineBatch(lambda fn: loop.call_later(0, fn))   # the core's Log actions
        self.console = Console(loop)
        self.on_change: Callable[[], None] = lambda: None   # e.g. systemd STATUS=
        self.events = EventBus()                 # transitions, exits, adoptions, readiness
        self._queue: deque[tuple[Instance, Event]] = deque()
        self._dispatching = False
        self._deferred: dict[Instance, None] = {}   # start requests waiting on depends_on
        self.reaper = Reaper(self)
        self.spawner = Spawner(self)
        self.readiness = Readiness(self, notify_path)
        self.trees = Trees(self, config.supervisor.cgroups)
        # the blocks' prefix the daemon holds the lock of: a reload's new one waits for the
        # next start, as the reload says (blocks under it would be another daemon's to adopt)
        self.block_prefix = config.supervisor.block_prefix
        self.intent = Intent(self, self.block_prefix)
        self.adoptions: Counter[str] = Counter()   # outcome of each record found at start-up

    # -- the set of instances -----------------------------------------------------------------
    def set_config(self, config: Config) -> None:
        """The config new spawns use (block prefix); instances keep their own worker config
        until ``reconfigure``."""
        self.config = config

    def _new_instance(self, worker: str, index: int, cfg: WorkerConfig,
                      policy: core.Policy | None = None, removed: bool = False) -> Instance:
        inst = Instance(instance_name(worker, index), worker, index, cfg,
                        policy or self._policy(worker, cfg),
                        removed=removed)
        if not removed:
            inst.stdout_path, inst.stderr_path = cfg.log_paths(worker, index)
        self._instances[inst.name] = inst
        self._by_worker.setdefault(worker, {})[inst.name] = inst
        return inst

    @property
    def ctl(self) -> str:
        """supervisorctl as the operator pastes it to reach this daemon: with -c FILE, and
        by its full path when the one on PATH is not ours (a venv that is not activated)."""
        command = _CTL
        return f"{command} -c {shlex.quote(self.config.path)}" if self.config.path else command

    def _policy(self, worker: str, cfg: WorkerConfig) -> core.Policy:
        return dataclasses.replace(cfg.policy(worker), ctl=self.ctl)

    def add_worker(self, name: str, cfg: WorkerConfig) -> list[Instance]:
        """Instances name:0 .. name:numprocs-1 that do not exist yet; returns the new ones."""
        policy = self._policy(name, cfg)
        made = []
        for index in range(cfg.numprocs):
            if instance_name(name, index) in self._instances:
                continue
            made.append(self._new_instance(name, index, cfg, policy))  # one Policy per worker
        return made

    def instance_named(self, name: str) -> Instance:
        """The instance called name (from a control block an earlier daemon left). One that
        the config does not have is made and marked removed: it is stopped and forgotten."""
        inst = self._instances.get(name)
        if inst is not None:
            return inst
        worker, index = split_instance_name(name)
        cfg = self.config.workers.get(worker) or _removed_config()
        inst = self._new_instance(worker, index or 0, cfg, removed=True)
        if worker in self.config.workers:
            inst.stdout_path, inst.stderr_path = cfg.log_paths(worker, inst.index)
        return inst

    def reconfigure(self, inst: Instance, cfg: WorkerConfig) -> None:
        """Give inst a changed worker config (its process, if any, is not touched)."""
        inst.cfg, inst.policy = cfg, self._policy(inst.worker, cfg)
        inst.stdout_path, inst.stderr_path = cfg.log_paths(inst.worker, inst.index)

    def remove(self, insts: Iterable[Instance]) -> None:
        """Instances gone from the config: stopped (gracefully when they can be) and forgotten
        once they have no process."""
        insts = list(insts)
        self.cancel_deferred(insts)
        for i in insts:
            i.removed = True
            if i.has_process:
                self.dispatch(i, core.StopRequested(self.now(), graceful=i.uses_library))
            else:
                self.forget(i)

    def forget(self, inst: Instance) -> None:
        self.cancel_deferred([inst])
        for kind in list(inst.timers):
            self._cancel_timer(inst, kind)
        self._instances.pop(inst.name, None)
        same = self._by_worker.get(inst.worker)
        if same is not None and same.pop(inst.name, None) is not None and not same:
            del self._by_worker[inst.worker]

    def select(self, targets: Iterable[str]) -> tuple[list[Instance], list[str]]:
        """Instances named by targets ("all", "web", "web:0"), and the unknown targets."""
        chosen: dict[str, Instance] = {}
        unknown: list[str] = []
        for t in targets:
            if t == "all":
                chosen.update(self._instances)
            elif t in self._instances:
                chosen[t] = self._instances[t]
            else:
                found = self._by_worker.get(t)
                if found:
                    chosen.update(found)
                else:
                    unknown.append(t)
        return sorted(chosen.values(), key=lambda i: (i.worker, i.index)), unknown

    def of_worker(self, worker: str) -> list[Instance]:
        return list(self._by_worker.get(worker, {}).values())

    # -- what the operator asks for -----------------------------------------------------------
    def request_start(self, insts: Iterable[Instance]) -> None:
        for inst in insts:
            if self._deps_ready(inst):
                self.dispatch(inst, core.StartRequested(self.now()))
            elif inst not in self._deferred:
                self._deferred[inst] = None
                missing = ", ".join(d for d in inst.cfg.depends_on if not self._worker_ready(d))
                logger.info(f"{inst.name} waiting for {missing} to be RUNNING before it starts")

    def request_stop(self, insts: Iterable[Instance], graceful: bool | None,
                     restart: bool = False) -> None:
        """Stop (or restart) insts; graceful only for a process that attached to its block,
        since a program that never did cannot read the control word. graceful None: each
        worker's stop_mode."""
        insts = list(insts)
        self.cancel_deferred(insts)
        wish = [i.cfg.stop_mode == "graceful" if graceful is None else bool(graceful)
                for i in insts]
        lib = attached_many([i for i, w in zip(insts, wish, strict=True) if w])
        now = self.now()
        stop = {g: core.StopRequested(now, graceful=g, restart=restart) for g in (False, True)}
        self.dispatch_all([(i, stop[w and i in lib]) for i, w in zip(insts, wish, strict=True)])

    def request_restart(self, insts: Iterable[Instance], graceful: bool | None) -> None:
        """Stop and start again the ones that run; start the ones that do not."""
        insts = list(insts)
        self.request_stop([i for i in insts if i.has_process], graceful, restart=True)
        self.request_start([i for i in insts if not i.has_process])

    def send_signal(self, inst: Instance, signum: int) -> bool:
        """supervisorctl signal: to the worker process itself (verified through its pidfd)."""
        if inst.pidfd is None or not inst.has_process:
            return False
        try:
            signal.pidfd_send_signal(inst.pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    def cancel_deferred(self, insts: Iterable[Instance]) -> None:
        for inst in insts:
            self._deferred.pop(inst, None)

    def _worker_ready(self, worker: str) -> bool:
        # from the last instance: in a mass start the last ones come up last, so a worker
        # that is not ready yet is told after one look, not after its RUNNING ones
        return all(i.st.state is State.RUNNING
                   for i in reversed(self._by_worker.get(worker, {}).values()))

    def _deps_ready(self, inst: Instance) -> bool:
        return all(self._worker_ready(d) for d in inst.cfg.depends_on)

    def _start_deferred(self) -> None:
        ready = [i for i in self._deferred if self._deps_ready(i)]
        for inst in ready:
            del self._deferred[inst]
            if not inst.removed and not inst.has_process and not inst.st.stop_requested:
                self.dispatch(inst, core.StartRequested(self.now()))

    # -- what an earlier daemon left running --------------------------------------------------
    def adopt(self, inst: Instance, pid: int, pidfd: int, block: blk.ControlBlock, child: bool,
              ready: bool, started_at: float, stop: core.StopInFlight | None = None,
              in_cgroup: bool | None = None) -> None:
        """A verified live process of inst, found at start-up: watch it (exit, tree, log
        rotation, as a process we spawned) and tell the core, with the stop in flight if the
        previous daemon had begun one."""
        inst.block, inst.child = block, child
        self.reaper.watch(inst, pid, pidfd)
        self.trees.adopt(inst, pid, in_cgroup)
        self.watch_logs(inst, later=True)    # rotation can wait until the socket is served
        self.adoptions["adopted"] += 1
        self.dispatch(inst, core.Adopted(self.now(), pid, ready, started_at, stop))

    def unverifiable(self, inst: Instance, why: str) -> None:
        """inst's recorded process may still be alive but cannot be verified."""
        self.adoptions["unverifiable"] += 1
        self.dispatch(inst, core.Unverifiable(self.now(), why))

    def restore_intent(self, inst: Instance, wanted: bool) -> None:
        """What the operator last asked for inst, as the previous daemon recorded it."""
        self.dispatch(inst, core.IntentRestored(self.now(), wanted))

    def restore_restarts(self, inst: Instance, restarts: int) -> None:
        """The restart count the previous daemon recorded (a count, not a state: no event)."""
        inst.st = dataclasses.replace(inst.st, restarts=restarts)

    def exited_while_away(self, inst: Instance, status: core.ExitStatus,
                          started_at: float, restart: bool = False) -> None:
        """inst's process ended while no daemon watched it (restart: in a restart's stop)."""
        self.adoptions["exited_while_away"] += 1
        cg = self.trees.cgroups
        if cg is not None and os.path.isdir(cg.path(inst.name)):
            inst.cgroup = cg.path(inst.name)      # what its leader left there goes first
        if inst.removed:
            self.trees.end(inst, None, lambda: self.forget(inst))
            return
        self.trees.end(inst, None, lambda: self.dispatch(
            inst, core.ExitedWhileAway(self.now(), status, restart)))

    def restore(self, inst: Instance, st: InstanceState, incarnation: int,
                deadlines: Mapping[TimerKind, float]) -> None:
        """Put back the record a re-exec saved (the pid stays the live one adoption found)."""
        live_pid = inst.st.pid
        for t in inst.timers.values():
            t.cancel()
        inst.timers.clear()
        inst.st = st
        if live_pid is not None and st.pid != live_pid:
            inst.st = dataclasses.replace(st, pid=live_pid)
        inst.incarnation = incarnation
        for kind, when in deadlines.items():
            self.arm_timer(inst, kind, when)

    # -- the dispatch loop --------------------------------------------------------------------
    def now(self) -> float:
        return self.loop.clock()

    def dispatch(self, inst: Instance, event: Event) -> None:
        self._queue.append((inst, event))
        if self._dispatching:
            return
        self._dispatching = True
        try:
            self._drain()
        finally:
            self._dispatching = False

    def dispatch_all(self, pairs: list[tuple[Instance, Event]]) -> None:
        """dispatch() of many events (a stop all): every event is stepped, then the signals
        the steps asked for go out as one walk (Trees.batch), then every other action and what
        follows: 10,000 exits run in the kernel beside the bookkeeping, not after it. Inside
        a dispatch: queued."""
        if self._dispatching or len(pairs) < 2:
            for inst, event in pairs:
                self.dispatch(inst, event)
            return
        self._dispatching = True
        try:
            with collector_paused():
                self._dispatch_batch(pairs)
        finally:
            self._dispatching = False

    def _dispatch_batch(self, pairs: list[tuple[Instance, Event]]) -> None:
        stepped = []
        with self.trees.batch():
            for inst, event in pairs:
                done = self._step(inst, event)
                if done is not None:
                    for action in (a for a in done[1] if isinstance(a, core.Signal)):
                        self._execute(inst, action, event.now)
                    stepped.append((inst, event, *done))
            self.intent.before_signals(stepped)    # (the signals go out at the block's end)
        for inst, event, before, actions in stepped:
            self._carry_out(inst, event, before, actions,
                            [a for a in actions if not isinstance(a, core.Signal)])
        self._drain()

    def _drain(self) -> None:
        while self._queue:
            inst, event = self._queue.popleft()
            done = self._step(inst, event)
            if done is not None:    # a stop's record is on disk before its signal goes out
                self.intent.before_step(inst, *done)
                self._carry_out(inst, event, done[0], done[1], done[1])

    def _step(self, inst: Instance, event: Event) -> tuple[InstanceState, list[core.Action]] | None:
        if isinstance(event, core.Exited | core.ExitedWhileAway):
            reason = exit_reason(event.status, inst.policy)
            inst.exits[reason] = inst.exits.get(reason, 0) + 1
        before = inst.st         # -> (the state before, the actions); None: refused
        try:
            inst.st, actions = core.step(before, event, inst.policy)
        except core.TransitionError as e:
            logger.error(f"{inst.name} {e} (event ignored)")
            return None
        return before, actions

    def _carry_out(self, inst: Instance, event: Event, before: InstanceState,
                   actions: list[core.Action], todo: list[core.Action]) -> None:
        for action in todo:          # the step's actions not done yet, then what follows
            self._execute(inst, action, event.now)
        publish_step(self.events, inst.name, event, before, inst.st, actions)
        old, same = before.state, (inst.st.wanted, inst.st.restarts) == (before.wanted,
                                                                          before.restarts)
        ended = (old in ENDED) != (inst.st.state in ENDED)
        if not same or ended or State.STOPPING in (old, inst.st.state):  # a new daemon's
            self.intent.changed(lazy=old is State.STOPPING and inst.st.state in NO_PROCESS
                                and same and not ended)
        if inst.st.state is not old:
            self._on_transition(inst)

    def _execute(self, inst: Instance, action: core.Action, now: float) -> None:
        match action:           # (the most frequent kinds first: a step has two or three)
            case core.Log(level=level, message=message):
                self.log(level, f"{inst.name} {message}")
            case core.ArmTimer(kind=kind, delay=delay):
                self.arm_timer(inst, kind, now + delay)
            case core.CancelTimer(kind=kind):
                self._cancel_timer(inst, kind)
            case core.Signal(signum=signum):
                self.trees.signal(inst, signum)
            case core.PostStop(deadline=deadline):
                if inst.block is not None:
                    inst.block.post_command(blk.CMD_STOP_GRACEFUL, blk.deadline_ns(deadline))
            case core.Spawn():
                self.spawner.enqueue(inst)

    def log(self, level: str, message: str) -> None:
        """A daemon log line of the runtime's own, batched per loop turn (LineBatch)."""
        self.lines.log(level, message)

    def arm_timer(self, inst: Instance, kind: TimerKind, when: float) -> None:
        self._cancel_timer(inst, kind)

        def fire() -> None:
            inst.timers.pop(kind, None)   # fired: not kept (a cancelled one never fires)
            self.dispatch(inst, core.TimerFired(self.now(), kind))

        inst.timers[kind] = self.loop.call_at(when, fire)

    def hurry(self, inst: Instance) -> bool:
        """A stop in flight goes to its next step now (the graceful wait or the kill timeout
        is cut short, as the operator asked); False if inst is not stopping."""
        for kind in (TimerKind.GRACEFUL, TimerKind.KILL):
            if inst.st.state is State.STOPPING and kind in inst.timers:
                self._cancel_timer(inst, kind)
                self.dispatch(inst, core.TimerFired(self.now(), kind, early=True))
                return True
        return False

    def _cancel_timer(self, inst: Instance, kind: TimerKind) -> None:
        t = inst.timers.pop(kind, None)
        if t is not None:
            t.cancel()

    def _on_transition(self, inst: Instance) -> None:
        self.readiness.on_transition(inst)
        if inst.st.state in (State.BACKOFF, State.FATAL, State.EXITED):
            report_output(inst, self.ctl)
        if inst.st.state is State.RUNNING and self._deferred and self._worker_ready(inst.worker):
            self._start_deferred()      # only a worker that just became ready can free one
        for w in list(inst.waiters):
            if w.done(inst):
                inst.waiters.remove(w)
                w.pending.discard(inst)
                if not w.pending:
                    w.finish()
        if inst.st.state in NO_PROCESS and inst.removed:
            self.forget(inst)
        self.on_change()

    def wait_for(self, insts: Iterable[Instance], done: Callable[[Instance], bool],
                 finish: Callable[[], None]) -> None:
        """Call finish() once every instance satisfies done (at once if they all do)."""
        pending = {i for i in insts if not done(i)}
        if not pending:
            finish()
            return
        w = Waiter(pending, done, finish)
        for i in pending:
            i.waiters.append(w)

    # -- processes ----------------------------------------------------------------------------
    def watch_logs(self, inst: Instance, sizes: tuple[int | None, int | None] = (None, None),
                   later: bool = False) -> None:
        """Rotation of inst's log files; sizes: theirs as just opened for a spawn, if known;
        later: their first check from the loop (Rotator.watch)."""
        for path, (spec, size) in {
                inst.stdout_path: (inst.cfg.log_config("stdout"), sizes[0]),
                inst.stderr_path: (inst.cfg.log_config("stderr"), sizes[1])}.items():
            if path:
                self.rotator.watch(path, spec.max_bytes, spec.backups, size, later)

    def open_pipes(self, inst: Instance, ends: list[int]) -> tuple[int | None, int | None]:
        """The write ends for a child whose output goes to the daemon (stdout/stderr:
        daemon), one pipe per target (stderr: stdout shares stdout's); also added to ends,
        for the caller to close once the child has them."""
        to_out, to_err = inst.cfg.to_daemon()
        same = inst.cfg.stderr == "stdout"
        out = err = None
        if to_out:
            pipe, out = self.console.open(inst.name, 1)
            inst.pipes.append(pipe)
            ends.append(out)
        if to_err and same:
            err = out
        elif to_err:
            pipe, err = self.console.open(inst.name, 2)
            inst.pipes.append(pipe)
            ends.append(err)
        return out, err

    def release_process(self, inst: Instance, unlink: bool = True) -> None:
        """Forget the pidfd and the control block of a process that is gone (unlink=False:
        of one that lives on without us — the daemon exits or re-executes)."""
        self.reaper.forget(inst)
        if inst.block is not None:
            inst.block.close()
            if unlink:
                inst.block.unlink()
            inst.block = None
        if unlink:               # else the pipes stay open: a re-exec hands them over
            for pipe in inst.pipes:
                pipe.finish()
            inst.pipes.clear()
        for path in {inst.stdout_path, inst.stderr_path} - {None}:
            self.rotator.unwatch(path)  # type: ignore[arg-type]

    def close(self) -> None:
        self.lines.close()
        for inst in self._instances.values():
            for kind in list(inst.timers):
                self._cancel_timer(inst, kind)
            self.release_process(inst, unlink=False)
        self.reaper.close()
        self.spawner.close()
        self.readiness.close()
        self.trees.close()
        self.rotator.close()
        self.console.close()


_CTL = ctl_command()


def _removed_config() -> WorkerConfig:
    """A stand-in config for an adopted instance that the config no longer has."""
    return WorkerConfig.model_validate({"command": ["(removed)"], "autostart": False,
                                        "restart": "never"})
