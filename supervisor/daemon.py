"""supervisord: the daemon. Runs in the foreground (systemd style) on one config file.

Start-up: lock (one daemon per config), adopt what an earlier daemon left running, start the
autostart workers in order, open the control socket, tell systemd READY=1 once they are up.
SIGTERM/SIGINT: graceful stop of everything, exit 0. SIGHUP: reload.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import shlex
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NoReturn

import click
from loguru import logger

from supervisor import fds, paths, runtimedir, safefs
from supervisor.config import Config, ConfigError, load_config
from supervisor.config.checks import file_warnings, output_warnings, program_warnings
from supervisor.config.errors import clip
from supervisor.control.handlers import Handlers
from supervisor.control.protocol import BAD_CONFIG, FAILED, OK, Reply
from supervisor.control.server import ControlServer, ServerError
from supervisor.convert import cli as convert_cli
from supervisor.core import COMING_UP, IN_TRANSITION, SUMMARY_ORDER, State
from supervisor.heap import collector_paused, settle_heap
from supervisor.interrupts import Interrupts
from supervisor.loading import ConfigLoads
from supervisor.logs import setup_daemon_logging
from supervisor.loop import Loop
from supervisor.names import ctl_command
from supervisor.reconcile import (
    apply_adoption,
    apply_config,
    apply_ended,
    apply_intent,
    load_state,
    restore_state,
    save_state,
)
from supervisor.runtime import Runtime
from supervisor.sdnotify import Notifier
from supervisor.spawn import reserve_low_fds

EXIT_BAD_CONFIG = 2
EXIT_LOCKED = 1


class LockedError(Exception):
    pass


def _flock(path: str, create_dir: bool) -> tuple[int, str]:
    """An exclusive flock on path (in a directory only we can write, never through a link):
    (fd, "") when we hold it, else (-1, what its holder wrote in it)."""
    name = os.path.basename(path)
    dfd = safefs.trusted_dir(os.path.dirname(path) or ".", create=create_dir)
    try:
        while True:
            fd = safefs.open_private(dfd, name, path)
            if not _try_flock(fd):
                holder = _holder_of(fd)
                os.close(fd)
                return -1, holder
            # the holder before us removes the file when it exits: make sure we locked the
            # file that is there now, not the one it just unlinked
            try:
                if os.stat(name, dir_fd=dfd, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    return fd, ""
            except FileNotFoundError:
                pass
            os.close(fd)
    finally:
        os.close(dfd)


def _try_flock(fd: int) -> bool:
    """The flock, tried for up to 50 ms: a daemon cleaning stale locks (runtimedir.py) holds
    one for microseconds; a running daemon holds its own for good."""
    deadline = time.monotonic() + 0.05
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


def _holder_of(fd: int) -> str:
    """What the holder of a lock wrote in it. It writes right after it takes the lock, so a
    file still empty is given a moment (bounded) before we say "unknown"."""
    deadline = time.monotonic() + 1.0
    while True:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if holder or time.monotonic() >= deadline:
            return holder or "unknown"
        time.sleep(0.01)


def release_lock(path: str, fd: int) -> None:
    """Remove the lock file we hold (so that none is left behind), then let it go."""
    with contextlib.suppress(OSError):
        if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)
    os.close(fd)


def acquire_lock(path: str, config_path: str, inherited_fd: int | None) -> int:
    """One daemon per config: flock a file beside the socket; the holder's PID is written in
    it."""
    if inherited_fd is not None:
        os.set_inheritable(inherited_fd, False)
        return inherited_fd
    fd, holder = _flock(path, create_dir=True)
    if fd < 0:
        raise LockedError(
            f"supervisord: another supervisord (pid {holder}) is already running "
            f"{config_path} (lock {path}); stop it first: {ctl_command()} -c "
            f"{shlex.quote(config_path)} shutdown"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def prefix_lock_path(prefix: str) -> str:
    return os.path.join(paths.runtime_dir(), f"prefix-{prefix}.lock")


def acquire_prefix_lock(prefix: str, config_path: str, inherited_fd: int | None) -> int:
    """One daemon per block prefix: two configs with the same block_prefix would adopt and
    stop each other's workers. The lock lives in the runtime directory (ours alone)."""
    if inherited_fd is not None:
        os.set_inheritable(inherited_fd, False)
        return inherited_fd
    dfd = safefs.private_dir(paths.runtime_dir())
    os.close(dfd)
    path = prefix_lock_path(prefix)
    fd, holder = _flock(path, create_dir=False)
    if fd < 0:
        pid, _, other = holder.partition(" ")
        raise LockedError(
            f"supervisord: block_prefix {prefix!r} is in use by another supervisord (pid {pid}, "
            f"config {other or 'unknown'}); give {config_path} a block_prefix of its own "
            "(supervisor: {block_prefix: NAME}) or stop the other one")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {os.path.realpath(config_path)}\n".encode(), 0)
    return fd


STATUS_EVERY = 0.25     # seconds between two STATUS= updates to systemd, at least


class Daemon:
    def __init__(self, config: Config, lock_fds: tuple[int, int]) -> None:
        self.config = config
        self.lock_fds = lock_fds     # the config's lock, the block prefix's lock
        self.started = config.supervisor  # what it runs with until its next start (the socket)
        self.loop = Loop()
        sup = config.supervisor
        self.notifier = Notifier.from_env()
        self.runtime = Runtime(self.loop, config, notify_path=f"{sup.socket}.notify")
        self.runtime.on_change = self._status_changed
        self.loads = ConfigLoads(self.loop, lambda: load_config(self.config.path), self._loaded)
        # The daemon logs to stderr, which systemd hands to the journal (JOURNAL_STREAM).
        where = ("the daemon log (the systemd journal)" if "JOURNAL_STREAM" in os.environ
                 else "the daemon log (supervisord's stderr)")
        handlers = Handlers(self)
        self.http: Any = None         # supervisor.http's server, when configured
        try:
            self.server = ControlServer(self.loop, sup.socket, handlers,
                                        mode=sup.socket_mode, group=sup.socket_group,
                                        log=logger.error, log_where=where)
            if sup.http is not None:
                # imported only here: a daemon without http never loads h11/prometheus_client
                try:
                    from supervisor.http.app import HttpEndpoint
                except ModuleNotFoundError as e:
                    raise ValueError(f"supervisor.http needs the {e.name} package: "
                                     "pip install 'pyvisor[http]'") from None
                self.http = HttpEndpoint(self, handlers, sup, logger.error, where)
                logger.info(f"http: listening on {self.http.bound}")
                if not self.http.address.loopback:
                    logger.warning(f"http: {self.http.bound} is reachable from other machines "
                                   "(http_allow_remote): anyone who reaches it reads status "
                                   "and metrics; control still needs the token")
            stale = runtimedir.clean_stale()     # what SIGKILLed daemons left
            if stale:
                logger.info(f"removed stale files of daemons that are gone from "
                            f"{paths.runtime_dir()}: {', '.join(sorted(stale)[:10])}"
                            f"{' ...' if len(stale) > 10 else ''}")
            paths.write_locator(config.path, sup.socket, os.getpid())
        except BaseException:
            if self.http is not None:
                self.http.close()
            if hasattr(self, "server"):
                self.server.close()
            self.runtime.close()      # nothing is running yet: leave nothing behind
            self.loop.close()
            raise
        self.leaving = ""       # "shutting down" / "re-executing": see Handlers
        self._shutdown_waiters: list[Callable[[], None]] = []
        self._status_pending = False
        self._status_sent = -STATUS_EVERY      # loop clock of the last STATUS=
        self.exit_code = 0
        self.interrupts = Interrupts(self.runtime)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._on_interrupt)
        self.loop.add_signal_handler(signal.SIGHUP, lambda _s: self._on_sighup())
        interval = self.notifier.watchdog_interval()
        if interval:
            self._watchdog(interval)

    def _on_sighup(self) -> None:
        if self.leaving:
            logger.warning(f"SIGHUP ignored: supervisord is {self.leaving}")
            return
        self.reload(lambda _r: None)

    # -- systemd ------------------------------------------------------------------------------
    def _watchdog(self, interval: float) -> None:
        self.notifier.watchdog()
        self.loop.call_later(interval, lambda: self._watchdog(interval))

    def _status_changed(self) -> None:
        # coalesce: at most one STATUS= per STATUS_EVERY, not one per transition (nor per loop
        # turn: the summary counts every instance, and a mass start has a turn every few ms)
        if not self._status_pending and self.notifier.enabled:
            self._status_pending = True
            self.loop.call_at(self._status_sent + STATUS_EVERY, self._send_status)

    def _send_status(self) -> None:
        self._status_pending = False
        self._status_sent = self.loop.clock()
        self.notifier.status(self.summary())

    def summary(self) -> str:
        counts = Counter(inst.st.state for inst in self.runtime.instances.values())
        return ", ".join(f"{counts[s]} {s.value.lower()}" for s in SUMMARY_ORDER
                         if counts[s]) or "no workers"

    # -- start-up -----------------------------------------------------------------------------
    def start(self, saved: dict[str, Any] | None) -> None:
        # Start-up makes some 50 objects per instance, nearly all of which live on: without
        # the cycle collector while it runs (its passes over a heap that grows to 10,000
        # instances are a fifth of an adoption's CPU), then settle_heap, and with it again
        # for what follows.
        with collector_paused():
            try:
                self._start(saved)
            finally:
                settle_heap()

    def _start(self, saved: dict[str, Any] | None) -> None:
        rt = self.runtime
        for name in self.config.start_order():
            rt.add_worker(name, self.config.workers[name])
        intent = rt.intent.load()
        apply_intent(rt, intent)
        adopted = apply_adoption(rt, self.config, intent)
        try:
            restored, pending = restore_state(rt, saved) if saved is not None else (set(), [])
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # another version's file
            logger.warning(f"cannot use the re-exec state ({type(e).__name__}: {e}); "
                           "adopting from blocks only")
            restored, pending = set(), []
        accounted = adopted | restored
        apply_ended(rt, intent, accounted)
        to_start = [i for name in self.config.start_order() for i in rt.of_worker(name)
                    if i.st.state is State.STOPPED and i.name not in accounted and i.wants_start]
        chosen = set(to_start)
        rt.request_start(to_start + [i for i in pending if i not in chosen])
        autostart = [i for i in rt.instances.values() if i.cfg.autostart]
        logger.info(f"supervisord {os.getpid()} running {self.config.path}: "
                    f"{len(rt.instances)} instances, {len(adopted)} adopted, "
                    f"socket {self.config.supervisor.socket}")
        rt.wait_for(autostart, lambda i: i.st.state not in COMING_UP, self._ready)

    def _ready(self) -> None:
        self.notifier.ready(self.summary())
        logger.info(f"ready: {self.summary()}")

    # -- verbs the control socket needs ------------------------------------------------------
    def reload(self, done: Callable[[Reply], None]) -> None:
        """Load the config on a thread (loading.py), then apply it here, on the loop."""
        self.loads.request(done)

    def _loaded(self, new: Config | BaseException, waiting: list[Callable[[Reply], None]]) -> None:
        def reply(r: Reply) -> None:
            for done in waiting:
                done(r)

        if self.leaving:            # a shutdown or re-exec began while the file was read
            reply(Reply(FAILED, err=f"supervisord is {self.leaving}; reload refused\n"))
            return
        if isinstance(new, ConfigError):
            logger.error(f"reload refused, still running the previous config:\n{new}")
            reply(Reply(BAD_CONFIG, err=f"reload refused; still running the previous config.\n"
                                        f"{new}\n"))
            return
        if not isinstance(new, Config):   # load_config raises only ConfigError: never die of it
            logger.opt(exception=new).error(
                f"reload refused, still running the previous config: {type(new).__name__}: {new}")
            reply(Reply(BAD_CONFIG, err=f"reload refused; still running the previous config.\n"
                                        f"cannot load {self.config.path}: "
                                        f"{type(new).__name__}: {new}\n"))
            return
        self.notifier.reloading()
        gc.unfreeze()       # what the reload drops must be collectable again
        summary, settle = apply_config(self.runtime, self.config, new)
        self.config = new
        settle_heap()
        if self.http is not None:
            note = self.http.reload(new.supervisor)
            if note:
                logger.info(note)
        logger.info(f"reloaded {new.path}: {summary.strip() or 'no changes'}")

        def finished() -> None:
            self.notifier.ready(self.summary())
            reply(Reply(OK, out=summary or "no changes\n"))

        self.runtime.wait_for(settle, lambda i: i.st.state not in IN_TRANSITION, finished)

    def _on_interrupt(self, signum: int) -> None:
        if self.interrupts.on_signal(signum, self.leaving == "shutting down"):
            self.shutdown(lambda: None)

    def shutdown(self, done: Callable[[], None]) -> None:
        self._shutdown_waiters.append(done)
        if self.leaving == "shutting down":
            return
        self.leaving = "shutting down"
        self.runtime.intent.enabled = False   # these stops are the daemon's, not the operator's
        self.notifier.stopping()
        logger.info("shutting down: stopping every worker gracefully")
        if (timeout := self.config.supervisor.shutdown_timeout) is not None:
            self.loop.call_later(timeout, lambda: self.interrupts.past_deadline(timeout))
        self._stop_in_order(list(reversed(self.config.start_order())))

    def _stop_in_order(self, names: list[str]) -> None:
        """Stop workers in reverse start order, one priority level at a time (instances of
        workers no longer in the config go with the first level)."""
        rt = self.runtime
        workers = self.config.workers
        insts = [i for i in rt.instances.values() if i.worker not in workers]
        rest = names
        if names:
            level = workers[names[0]].priority
            batch = {n for n in names if workers[n].priority == level}
            rest = [n for n in names if n not in batch]
            insts += [i for i in rt.instances.values() if i.worker in batch]
        live = [i for i in insts if i.has_process]
        if not live and not rest:
            self._finish_shutdown()
            return
        rt.request_stop(live, graceful=not self.interrupts.hurried)
        if self.interrupts.killing:     # once the stops are stepped (this may run in a step)
            self.loop.call_later(0, lambda: self.interrupts.kill_now(live))
        rt.wait_for(insts, lambda i: not i.has_process, lambda: self._stop_in_order(rest))

    def _finish_shutdown(self) -> None:
        logger.info("every worker stopped; supervisord exits")
        self.runtime.intent.remove()      # an orderly stop: the next start follows the config
        for done in self._shutdown_waiters:
            done()
        self.loop.call_later(0.05, self.loop.stop)   # let the last replies go out

    def reexec(self) -> None:
        self.leaving = "re-executing"
        self.loads.abandon(Reply(FAILED, err="supervisord is re-executing; reload refused\n"))
        logger.info("re-executing supervisord in place (same pid; workers keep running)")
        self.loop.call_later(0.05, self._exec)      # let the reply go out first

    def _exec(self) -> NoReturn:
        # Saved right before execv, with nothing running in between: a spawn or an exit
        # handled after an earlier save would be lost (a process the state calls STOPPED).
        state_path = f"{self.started.socket}.reexec.json"
        save_state(self.runtime, state_path)
        self.server.close()
        if self.http is not None:
            self.http.close()
        self.runtime.close()
        config_lock, prefix_lock = self.lock_fds
        for fd in self.lock_fds:
            os.set_inheritable(fd, True)
        argv = [sys.executable, "-m", "supervisor.daemon", "-c", self.config.path,
                "--reexec-state", state_path, "--lock-fd", str(config_lock),
                "--prefix-lock-fd", str(prefix_lock)]
        logger.complete()
        os.execv(sys.executable, argv)

    # -- running ------------------------------------------------------------------------------
    def close(self) -> None:
        self.server.close()
        if self.http is not None:
            self.http.close()
        self.runtime.close()
        paths.remove_locator(self.config.path, os.getpid())
        self.loop.close()
        sup = self.started      # a reload's new socket or prefix: not this daemon's locks
        release_lock(f"{sup.socket}.lock", self.lock_fds[0])
        release_lock(prefix_lock_path(sup.block_prefix), self.lock_fds[1])


def _load_saved(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        return load_state(path)
    except (OSError, ValueError, RecursionError) as e:
        logger.warning(f"cannot read the re-exec state {path}: {e}; adopting from blocks only")
        return None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", envvar=paths.ENV_CONFIG,
              type=click.Path(dir_okay=False),
              help="YAML config file (or $PYVISOR_CONFIG); needed except with --convert.")
@click.option("--check", is_flag=True, help="Validate the config and exit.")
@click.option("--convert", "convert_path", metavar="FILE.conf", help="Print supervisord's "
              "FILE.conf as a pyvisor config (what cannot be carried over: on stderr); exit.")
@click.option("--reexec-state", hidden=True)
@click.option("--lock-fd", type=int, hidden=True)
@click.option("--prefix-lock-fd", type=int, hidden=True)
@click.version_option(package_name="pyvisor", prog_name="supervisord",
                      message="%(prog)s (pyvisor) %(version)s")
def main(config_path: str | None, check: bool, convert_path: str | None,
         reexec_state: str | None, lock_fd: int | None, prefix_lock_fd: int | None) -> None:
    """Run the supervisor daemon in the foreground on CONFIG."""
    if convert_path is not None:
        sys.exit(convert_cli.run(click.get_current_context(), convert_path))
    if config_path is None:
        raise click.MissingParameter(param_type="option", param_hint="'-c' / '--config'")
    try:
        config = load_config(config_path)
    except ConfigError as e:
        click.echo(str(e), err=True)
        sys.exit(EXIT_BAD_CONFIG)
    warnings = [clip(w) for w in file_warnings(config_path) + program_warnings(config)]
    if check:
        warnings += [clip(w) for w in output_warnings(config)]   # a spawn says it anyway
        for line in warnings:
            click.echo(line, err=True)
        def count(n: int, what: str) -> str:
            return f"{n} {what}" if n == 1 else f"{n} {what}s"
        more = f", {count(len(warnings), 'warning')}" if warnings else ""
        click.echo(f"{config_path}: OK ({count(len(config.workers), 'worker')}{more})")
        return
    setup_daemon_logging(config.supervisor.log_level)
    for line in warnings:
        logger.warning(line)
    try:
        fd = acquire_lock(f"{config.supervisor.socket}.lock", config_path, lock_fd)
        prefix_fd = acquire_prefix_lock(config.supervisor.block_prefix, config_path,
                                        prefix_lock_fd)
    except LockedError as e:
        click.echo(str(e), err=True)
        sys.exit(EXIT_LOCKED)
    except OSError as e:
        click.echo(f"supervisord: cannot create the lock beside {config.supervisor.socket}: {e}",
                   err=True)
        sys.exit(EXIT_LOCKED)
    before, now, workers = fds.raise_limit()      # once we know we are the one daemon
    reserve_low_fds()
    logger.info(f"file descriptors: soft limit {before} -> {now}"
                + (f" (workers get {workers})" if workers != now else ""))
    try:
        daemon = Daemon(config, (fd, prefix_fd))
    except (OSError, ServerError, ValueError) as e:   # ValueError: supervisor.http's HttpError
        click.echo(f"supervisord: cannot start: {e}", err=True)
        release_lock(f"{config.supervisor.socket}.lock", fd)
        release_lock(prefix_lock_path(config.supervisor.block_prefix), prefix_fd)
        sys.exit(1)
    try:
        daemon.start(_load_saved(reexec_state))
        daemon.loop.run()
    finally:
        daemon.close()
    sys.exit(daemon.exit_code)


if __name__ == "__main__":
    main()
