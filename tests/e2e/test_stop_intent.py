"""A stop of one instance is on disk before its signal goes out (runtime/intent.py).

The window was the rest of a loop turn: the signal sent, the intent written only at the turn's
end. To hit it every time, without a hook in the daemon, the test holds the daemon right after
its kill() returns: strace's syscall fault injection (delay_exit) keeps it stopped there for
seconds, the worker dies of the signal meanwhile, and the daemon is SIGKILLed at exactly the
worst moment. Its successor must keep the instance stopped."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import (
    SUPERVISORCTL,
    DaemonFactory,
    DaemonProcess,
    pid_alive,
    write_script,
)
from tests.support.wait import wait_until

STRACE = shutil.which("strace")


GRACEFUL = """\
from worker import Worker

with Worker() as w:
    w.ready()
    w.wait_for_stop()
"""


def _kill_held_after(d: DaemonProcess, tmp_path: Path, syscall: str, stop: list[str],
                     pid: int) -> None:
    """Issue ``stop`` with the daemon's main thread held (strace, 20 s) on its way out of each
    ``syscall`` (kill: the stop signal; futex: the wake of a posted graceful stop); once the
    worker ``pid`` is gone of it, SIGKILL the daemon there, and wait for it."""
    assert STRACE is not None
    err = tmp_path / "strace.err"
    with open(err, "wb") as e:
        tracer = subprocess.Popen(
            [STRACE, "-p", str(d.pid), "-o", str(tmp_path / "strace.out"),
             "-e", f"trace={syscall}", "-e", f"inject={syscall}:delay_exit=20000000"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=e)
    ctl: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: b"attached" in err.read_bytes(), 10, "strace attached")
        ctl = subprocess.Popen([SUPERVISORCTL, "-c", str(d.config_path), *stop],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        wait_until(lambda: not pid_alive(pid), 10, "the worker gone of the stop")
        d.kill(signal.SIGKILL)        # held right after the signal: the worst moment
    finally:
        if tracer.poll() is None:        # (its tracee is reported to its parent once the
            tracer.terminate()           # tracer lets go)
        tracer.wait(10)
        assert d.proc is not None
        d.proc.wait(10)
        if ctl is not None:
            ctl.wait(30)


def _stays_stopped(d: DaemonProcess, name: str) -> None:
    mark = d.log_mark()
    d.start()
    row = d.wait_state(name, "STOPPED", timeout=10)
    assert row["pid"] is None, row
    text = d.log_text()[mark:]
    assert "-> STARTING" not in text, text


@pytest.mark.skipif(STRACE is None, reason="needs strace (apt-get install strace)")
def test_a_daemon_killed_right_after_a_single_stop_signal_keeps_the_stop(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """stop w:0, and the daemon SIGKILLed just after its SIGTERM went out: the next daemon
    found the process gone and no record of the stop (restart: always), and started it
    again. The record is now written before the signal."""
    d = daemon_factory({"w": {"command": ["sleep", "100000"], "start_seconds": 0.1,
                              "restart": "always"}})
    d.allow_leftovers = True
    d.start()
    pid = d.wait_state("w:0", "RUNNING")["pid"]
    _kill_held_after(d, tmp_path, "kill", ["stop", "w:0"], pid)
    _stays_stopped(d, "w:0")


@pytest.mark.skipif(STRACE is None, reason="needs strace (apt-get install strace)")
def test_a_daemon_killed_right_after_posting_a_graceful_stop_keeps_the_stop(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """The same for stop --graceful of a library worker: no signal, a command posted in its
    block and a futex wake; the worker returns from wait_for_stop() and exits while the daemon
    is held just after the wake."""
    script = write_script(tmp_path, "graceful.py", GRACEFUL)
    d = daemon_factory({"g": {"command": [sys.executable, script], "restart": "always",
                              "stop_mode": "graceful", "graceful_timeout": 30}})
    d.allow_leftovers = True
    d.start()
    pid = d.wait_state("g:0", "RUNNING")["pid"]
    _kill_held_after(d, tmp_path, "futex", ["stop", "--graceful", "g:0"], pid)
    _stays_stopped(d, "g:0")
