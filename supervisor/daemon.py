"""supervisord: the daemon. Runs in the foreground (systemd style) on one config file.

Start-up: lock (one daemon per config), adopt what an earlier daemon left running, start the
autostart workers in order, open the control socket, tell systemd READY=1 once they are up.
SIGTERM/SIGINT: graceful stop of everything, exit 0. SIGHUP: reload.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, NoReturn

import click
from loguru import logger

from supervisor import paths, safefs
from supervisor.config import Config, ConfigError, load_config
from supervisor.control.handlers import Handlers
from supervisor.control.protocol import BAD_CONFIG, OK, Reply
from supervisor.control.server import ControlServer
from supervisor.core import COMING_UP, IN_TRANSITION, SUMMARY_ORDER, State
from supervisor.logs import setup_daemon_logging
from supervisor.loop import Loop
from supervisor.reconcile import (
    apply_adoption,
    apply_config,
    load_state,
    restore_state,
    save_state,
)
from supervisor.runtime import Runtime
from supervisor.sdnotify import Notifier

EXIT_BAD_CONFIG = 2
EXIT_LOCKED = 1


class LockedError(Exception):
    pass


def acquire_lock(path: str, config_path: str, inherited_fd: int | None) -> int:
    """flock a file beside the socket; the holder's PID is written in it. The directory must
    be one only we can write, and the lock is never opened through a link."""
    if inherited_fd is not None:
        os.set_inheritable(inherited_fd, False)
        return inherited_fd
    dfd = safefs.trusted_dir(os.path.dirname(path) or ".", create=True)
    try:
        fd = safefs.open_private(dfd, os.path.basename(path), path)
    finally:
        os.close(dfd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LockedError(
            f"supervisord: another supervisord (pid {holder}) is already running "
            f"{config_path} (lock {path}); stop it first: supervisorctl -c {config_path} shutdown"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Daemon:
    def __init__(self, config: Config, lock_fd: int) -> None:
        self.config = config
        self.lock_fd = lock_fd
        self.loop = Loop()
        sup = config.supervisor
        self.notifier = Notifier.from_env()
        self.runtime = Runtime(self.loop, config, notify_path=f"{sup.socket}.notify")
        self.runtime.on_change = self._status_changed
        # The daemon logs to stderr, which systemd hands to the journal (JOURNAL_STREAM).
        where = ("the daemon log (the systemd journal)" if "JOURNAL_STREAM" in os.environ
                 else "the daemon log (supervisord's stderr)")
        self.server = ControlServer(self.loop, sup.socket, Handlers(self), mode=sup.socket_mode,
                                    group=sup.socket_group, log=logger.error, log_where=where)
        paths.write_locator(config.path, sup.socket, os.getpid())
        self._shutting_down = False
        self._shutdown_waiters: list[Callable[[], None]] = []
        self._status_pending = False
        self.exit_code = 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, lambda _s: self.shutdown(lambda: None))
        self.loop.add_signal_handler(signal.SIGHUP, lambda _s: self.reload(lambda _r: None))
        interval = self.notifier.watchdog_interval()
        if interval:
            self._watchdog(interval)

    # -- systemd ------------------------------------------------------------------------------
    def _watchdog(self, interval: float) -> None:
        self.notifier.watchdog()
        self.loop.call_later(interval, lambda: self._watchdog(interval))

    def _status_changed(self) -> None:
        # coalesce: one STATUS= per loop turn, not one per transition of 1,000 workers
        if not self._status_pending and self.notifier.enabled:
            self._status_pending = True
            self.loop.call_later(0, self._send_status)

    def _send_status(self) -> None:
        self._status_pending = False
        self.notifier.status(self.summary())

    def summary(self) -> str:
        counts = Counter(inst.st.state for inst in self.runtime.instances.values())
        return ", ".join(f"{counts[s]} {s.value.lower()}" for s in SUMMARY_ORDER
                         if counts[s]) or "no workers"

    # -- start-up -----------------------------------------------------------------------------
    def start(self, saved: dict[str, Any] | None) -> None:
        rt = self.runtime
        for name in self.config.start_order():
            rt.add_worker(name, self.config.workers[name])
        adopted = apply_adoption(rt, self.config)
        restored = restore_state(rt, saved) if saved is not None else set()
        to_start = [i for name in self.config.start_order()
                    for i in rt.instances.values()
                    if i.worker == name and i.cfg.autostart and i.st.state is State.STOPPED
                    and i.name not in adopted | restored]
        rt.request_start(to_start)
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
        try:
            new = load_config(self.config.path)
        except ConfigError as e:
            logger.error(f"reload refused, still running the previous config:\n{e}")
            done(Reply(BAD_CONFIG, err=f"reload refused; still running the previous config.\n"
                                       f"{e}\n"))
            return
        self.notifier.reloading()
        summary, settle = apply_config(self.runtime, self.config, new)
        self.config = new
        logger.info(f"reloaded {new.path}: {summary.strip() or 'no changes'}")

        def finished() -> None:
            self.notifier.ready(self.summary())
            done(Reply(OK, out=summary or "no changes\n"))

        self.runtime.wait_for(settle, lambda i: i.st.state not in IN_TRANSITION, finished)

    def shutdown(self, done: Callable[[], None]) -> None:
        self._shutdown_waiters.append(done)
        if self._shutting_down:
            return
        self._shutting_down = True
        self.notifier.stopping()
        logger.info("shutting down: stopping every worker gracefully")
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
        rt.request_stop(live, graceful=True)
        rt.wait_for(insts, lambda i: not i.has_process, lambda: self._stop_in_order(rest))

    def _finish_shutdown(self) -> None:
        logger.info("every worker stopped; supervisord exits")
        for done in self._shutdown_waiters:
            done()
        self.loop.call_later(0.05, self.loop.stop)   # let the last replies go out

    def reexec(self) -> None:
        state_path = f"{self.config.supervisor.socket}.reexec.json"
        save_state(self.runtime, state_path)
        logger.info("re-executing supervisord in place (same pid; workers keep running)")
        self.loop.call_later(0.05, lambda: self._exec(state_path))

    def _exec(self, state_path: str) -> NoReturn:
        self.server.close()
        self.runtime.close()
        os.set_inheritable(self.lock_fd, True)
        argv = [sys.executable, "-m", "supervisor.daemon", "-c", self.config.path,
                "--reexec-state", state_path, "--lock-fd", str(self.lock_fd)]
        logger.complete()
        os.execv(sys.executable, argv)

    # -- running ------------------------------------------------------------------------------
    def close(self) -> None:
        self.server.close()
        self.runtime.close()
        paths.remove_locator(self.config.path, os.getpid())
        self.loop.close()


def _load_saved(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        return load_state(path)
    except (OSError, ValueError, RecursionError) as e:
        logger.warning(f"cannot read the re-exec state {path}: {e}; adopting from blocks only")
        return None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", envvar=paths.ENV_CONFIG, required=True,
              type=click.Path(dir_okay=False), help="YAML config file (or $PYVISOR_CONFIG).")
@click.option("--check", is_flag=True, help="Validate the config and exit.")
@click.option("--reexec-state", hidden=True)
@click.option("--lock-fd", type=int, hidden=True)
def main(config_path: str, check: bool, reexec_state: str | None, lock_fd: int | None) -> None:
    """Run the supervisor daemon in the foreground on CONFIG."""
    try:
        config = load_config(config_path)
    except ConfigError as e:
        click.echo(str(e), err=True)
        sys.exit(EXIT_BAD_CONFIG)
    if check:
        click.echo(f"{config_path}: OK ({len(config.workers)} workers)")
        return
    setup_daemon_logging(config.supervisor.log_level)
    try:
        fd = acquire_lock(f"{config.supervisor.socket}.lock", config_path, lock_fd)
    except LockedError as e:
        click.echo(str(e), err=True)
        sys.exit(EXIT_LOCKED)
    except OSError as e:
        click.echo(f"supervisord: cannot create the lock beside {config.supervisor.socket}: {e}",
                   err=True)
        sys.exit(EXIT_LOCKED)
    try:
        daemon = Daemon(config, fd)
    except OSError as e:
        click.echo(f"supervisord: cannot start: {e}", err=True)
        sys.exit(1)
    try:
        daemon.start(_load_saved(reexec_state))
        daemon.loop.run()
    finally:
        daemon.close()
    sys.exit(daemon.exit_code)


if __name__ == "__main__":
    main()
