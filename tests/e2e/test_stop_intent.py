"""Crash windows held open with strace: a stop of one instance is on disk before its signal
goes out (runtime/intent.py), and a spawn's config before the spawn (runtime/spawning.py).

The window was the rest of a loop turn: the signal sent, the intent written only at the turn's
end. To hit it every time, without a hook in the daemon, the test holds the daemon right after
its kill() returns: strace's syscall fault injection (delay_exit) keeps it stopped there for
seconds, the worker dies of the signal meanwhile, and the daemon is SIGKILLed at exactly the
worst moment. Its successor must keep the instance stopped."""

from __future__ import annotations

import os
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


def _naming(block: str) -> list[int]:
    want = f"PYVISOR_BLOCK={block}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if want in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.skipif(STRACE is None, reason="needs strace (apt-get install strace)")
def test_a_daemon_killed_between_a_spawn_and_its_record_is_succeeded_by_adoption(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """The daemon SIGKILLed right after clone3 returned, before the spawn was recorded in the
    block, the worker a shell whose child inherits PYVISOR_BLOCK: its successor found two
    processes naming the block in its cgroup and made it FATAL ("unverifiable"), and, had it
    adopted, its config hash was unrecorded, so "config changed while supervisord was down"
    restarted it. It adopts the leader (the session leader of the two) and keeps it."""
    from worker import block as blk

    d = daemon_factory({
        "a": {"command": ["sleep", "100000"], "start_seconds": 0.1},  # the helper thread up
        "w": {"command": ["sh", "-c", "sleep 100000 & wait"], "start_seconds": 0.1,
              "autostart": False}})
    d.allow_leftovers = True
    d.start()
    d.wait_state("a:0", "RUNNING")
    if "one cgroup per instance" not in d.log_text():
        pytest.skip("no cgroups here: a process naming a block cannot be told ours")
    name = blk.shm_name(d.prefix, "w:0")
    assert STRACE is not None
    err = tmp_path / "strace.err"
    with open(err, "wb") as e:
        tracer = subprocess.Popen(
            [STRACE, "-p", str(d.pid), "-o", str(tmp_path / "strace.out"),
             "-e", "trace=clone3", "-e", "inject=clone3:delay_exit=20000000"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=e)
    ctl: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: b"attached" in err.read_bytes(), 10, "strace attached")
        ctl = subprocess.Popen([SUPERVISORCTL, "-c", str(d.config_path), "start", "w"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        procs = wait_until(lambda: _naming(name), 10,
                           "the shell and its child naming the block", ok=lambda p: len(p) == 2)
        d.kill(signal.SIGKILL)      # held right after the spawn, before its record
    finally:
        if tracer.poll() is None:
            tracer.terminate()
        tracer.wait(10)
        assert d.proc is not None
        d.proc.wait(10)
        if ctl is not None:
            ctl.wait(30)
    leader = [p for p in procs if os.getpgid(p) == p]   # the spawn's setsid
    assert len(leader) == 1, procs
    mark = d.log_mark()
    d.start()
    row = d.wait_state("w:0", "RUNNING", timeout=20)
    text = d.log_text()[mark:]
    assert (row["pid"], row["adopted"]) == (leader[0], True), (row, text)
    assert "config changed" not in text and "w:0 spawned pid" not in text, text
    assert sorted(_naming(name)) == sorted(procs)
