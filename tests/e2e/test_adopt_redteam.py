"""Adoption after a daemon SIGKILL, attacked after it was made cheaper (one /proc read per
block, batched log lines, deferred rotation checks): what the new daemon logs and does must be
what the old path logged and did. Real daemons, real workers, real SIGKILLs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from supervisor.adopt import open_block
from supervisor.runtime.spawning import create_block
from tests.support.daemon import DaemonFactory, DaemonProcess, pid_alive
from tests.support.shm import remove_shm, shm_objects
from tests.support.wait import wait_until
from worker import block as blk


def _kill_daemon(d: DaemonProcess) -> None:
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)


def _leader_gone_child_left(daemon_factory: DaemonFactory, tmp_path: Path,
                            child: str) -> tuple[DaemonProcess, int]:
    """A worker w (restart: never) whose shell leaves ``child`` in its cgroup and execs a
    sleep; once RUNNING, the daemon and then that leader are SIGKILLed: (the daemon, not
    running, and the child's pid)."""
    left = tmp_path / "left.pid"
    d = daemon_factory({"w": {"command": ["sh", "-c", f"{child} & echo $! > {left}; "
                                          "exec sleep 100000"],
                              "start_seconds": 0.1, "kill_timeout": 2, "restart": "never"}})
    d.start()
    if "one cgroup per instance" not in d.log_text():
        pytest.skip("no cgroups here: the daemon cannot find what an exited leader left")
    leader = d.wait_state("w:0", "RUNNING")["pid"]
    wait_until(lambda: left.exists() and left.read_text().strip(), 10, "the child's pid")
    _kill_daemon(d)
    os.kill(leader, signal.SIGKILL)
    wait_until(lambda: not pid_alive(leader), 10, "the leader gone")
    return d, int(left.read_text())


def test_adoption_lines_keep_their_order_with_lines_logged_directly(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """A worker whose leader exited while the daemon was down, leaving a child in its cgroup:
    the adopting daemon says it exited, and only then that it kills what the leader left (a
    line the trees write directly, not through the adoption's batch)."""
    d, child = _leader_gone_child_left(daemon_factory, tmp_path, "sleep 100000")
    mark = d.log_mark()
    d.start()
    d.wait_state("w:0", "EXITED", timeout=20)
    wait_until(lambda: not pid_alive(child), 10, "the leader's child killed")
    text = d.log_text()[mark:]
    said = re.search(r"w:0 exited while supervisord was down", text)
    killing = re.search(r"w:0 killing what its exited leader left in its cgroup", text)
    assert said and killing, text
    assert said.start() < killing.start(), f"lines out of order:\n{text}"


def test_a_daemon_killed_while_it_books_a_stop_all_keeps_the_stop(
        daemon_factory: DaemonFactory) -> None:
    """stop all: the signals went out, then a turn of bookkeeping (a second at 10,000), and
    only then was the intent written. A daemon SIGKILLed in between (here by a worker, on its
    SIGTERM) left no record of the stop: the next daemon restarted every instance that had
    exited ('exited while supervisord was down ... restart=on-failure'). What was asked is
    now recorded before the signals go out: every instance stays stopped."""
    d = daemon_factory({
        "killer": {"command": ["sh", "-c", "trap 'kill -9 $PPID; exit 0' TERM; "
                               "while :; do sleep 0.1; done"], "start_seconds": 0.2,
                   "priority": 1},
        "s": {"command": ["sleep", "100000"], "numprocs": 300, "start_seconds": 0.2},
    })
    d.start()
    wait_until(lambda: all(r["state"] == "RUNNING" for r in d.status_json()), 60,
               "every instance RUNNING")
    d.ctl("stop", "all", timeout=30)           # refused or cut short: the daemon is killed
    assert d.proc is not None
    d.proc.wait(20)
    mark = d.log_mark()
    d.start()

    def settled() -> bool:
        rows = d.status_json()
        return all(r["state"] in ("STOPPED", "EXITED", "FATAL") for r in rows) and all(
            r["pid"] is None for r in rows)
    wait_until(settled, 60, "every instance stopped by the next daemon")
    started = [r["name"] for r in d.status_json() if r["state"] != "STOPPED"]
    assert not started, f"started again after a stop all: {started[:5]} ({len(started)})"
    assert "STOPPED -> STARTING" not in d.log_text()[mark:]


def test_a_root_worker_that_drops_its_own_privileges_is_adopted(
        daemon_factory: DaemonFactory) -> None:
    """A program run as root that setuid()s itself (memcached -u, dnsmasq, haproxy's user)
    was FATAL after a daemon SIGKILL ('unverifiable: pid N runs as uid 65534, not 0') and
    never started again. Its instance's cgroup, which nobody else can join, holds it: it is
    adopted, and a stop reaches it."""
    d = daemon_factory({"drop": {
        "command": [sys.executable, "-c", "import os, time; os.setgid(65534); "
                    "os.setuid(65534); time.sleep(100000)"], "start_seconds": 0.3}})
    d.start()
    if "one cgroup per instance" not in d.log_text():
        pytest.skip("no cgroups here: a changed uid cannot be told from a foreign process")
    pid = d.wait_state("drop:0", "RUNNING")["pid"]
    wait_until(lambda: os.stat(f"/proc/{pid}").st_uid == 65534, 10, "the worker's setuid")
    _kill_daemon(d)
    d.start()
    row = d.wait_state("drop:0", "RUNNING")
    assert (row["pid"], row["adopted"]) == (pid, True), row
    d.ctl("stop", "drop")
    wait_until(lambda: not pid_alive(pid), 10, "the adopted worker stopped")


def test_a_block_made_ahead_of_a_spawn_that_never_came_is_no_exit(
        daemon_factory: DaemonFactory) -> None:
    """The blocks of the next spawns are made ahead of them (runtime/outputs.py): a daemon
    SIGKILLed in a start all leaves up to 16 blocks whose spawn never happened. The next
    daemon took each for a process that 'exited while supervisord was down (unknown)', and an
    instance with restart: never stayed EXITED, never started although it was to start. Such
    a block (what the helper makes: no spawn recorded, no process naming it) is removed and
    the instance starts as it would without it."""
    d = daemon_factory({"w": {"command": ["sleep", "100000"], "start_seconds": 0.1,
                              "kill_timeout": 2, "restart": "never", "numprocs": 2}})
    name = blk.shm_name(d.prefix, "w:1")
    create_block(name, 1, 1, None, None).close()        # as the helper leaves it
    try:
        d.start()
        wait_until(lambda: [r["state"] for r in d.status_json()] == ["RUNNING"] * 2, 20,
                   "both instances RUNNING")
        assert "exited while supervisord was down" not in d.log_text()
        d.stop()
        assert not shm_objects(d.prefix + "."), "a block left behind"
    finally:
        remove_shm(d.prefix + ".")


def test_an_unrecorded_block_whose_cgroup_is_busy_is_still_an_exit(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """The other side of the test above: a block whose spawn was not recorded while the
    instance's cgroup still holds a process (the leader gone before the record, or one that
    overwrote its environment, so that none names the block) is not 'never ran': what is in
    the cgroup is killed first and the exit is reported, as before; nothing is started beside
    it."""
    d, child = _leader_gone_child_left(daemon_factory, tmp_path,
                                       "env -u PYVISOR_BLOCK sleep 100000")
    block = open_block(blk.shm_name(d.prefix, "w:0"))
    assert block is not None
    block.set_spawned(0, 0, 1)             # as if the daemon died before recording the spawn
    block.close()
    try:
        d.start()
        d.wait_state("w:0", "EXITED", timeout=20)
        wait_until(lambda: not pid_alive(child), 10, "what was left in the cgroup killed")
        assert "exited while supervisord was down" in d.log_text()
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_daemon_killed_in_a_restart_all_leaves_none_stopped(
        daemon_factory: DaemonFactory) -> None:
    """restart all, and the daemon SIGKILLed while the stops are under way (here by a worker,
    on its SIGTERM): every instance was asked to run again, so the next daemon has each
    running, whether its process exited while no daemon watched (with code 0: not a failure
    for restart: on-failure) or lives on."""
    loop = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
    d = daemon_factory({
        "killer": {"command": ["sh", "-c", "trap 'kill -9 $PPID; exit 0' TERM; "
                               "while :; do sleep 0.1; done"], "start_seconds": 0.2,
                   "priority": 1, "restart": "never"},
        "s": {"command": ["sh", "-c", loop], "numprocs": 50, "start_seconds": 0.2,
              "restart": "never"},
    })
    d.start()
    wait_until(lambda: all(r["state"] == "RUNNING" for r in d.status_json()), 60,
               "every instance RUNNING")
    d.ctl("restart", "all", timeout=30)        # cut short: the daemon is killed
    assert d.proc is not None
    d.proc.wait(20)
    d.start()

    def settled() -> bool:
        rows = [r for r in d.status_json() if r["name"].startswith("s:")]
        return all(r["state"] in ("RUNNING", "EXITED", "FATAL", "STOPPED") for r in rows)
    wait_until(settled, 60, "every instance settled")
    left = [r["name"] for r in d.status_json()
            if r["name"].startswith("s:") and r["state"] != "RUNNING"]
    assert not left, f"asked to restart, left stopped: {left}\n{d.log_text()[-3000:]}"
    killer = d.wait_state("killer:0", "RUNNING")["pid"]    # restarted too: it would kill
    os.kill(killer, signal.SIGKILL)                         # this daemon at its shutdown
    d.wait_state("killer:0", "EXITED")


def test_instances_that_ended_for_good_stay_ended_across_a_daemon_sigkill(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """A finished restart: never job (EXITED) and a crash loop given up on (FATAL) have no
    process and no block: the successor of a SIGKILLed daemon took them for never started
    and started both again (the job ran twice, the loop crashed 5 more times)."""
    runs = tmp_path / "runs"
    d = daemon_factory({
        "job": {"command": ["sh", "-c", f"echo ran >> {runs}"], "start_seconds": 0,
                "restart": "never"},
        "loop": {"command": ["sh", "-c", "exit 3"], "start_seconds": 1, "start_retries": 1,
                 "backoff": {"initial": 0.05, "factor": 1, "max": 0.05}},
        "up": {"command": ["sleep", "100000"], "start_seconds": 0.1},
    }).start()
    d.wait_state("job:0", "EXITED")
    d.wait_state("loop:0", "FATAL")
    up = d.wait_state("up:0", "RUNNING")["pid"]
    assert runs.read_text() == "ran\n"
    spawns = d.log_text().count("loop:0 spawned pid")
    _kill_daemon(d)
    mark = d.log_mark()
    d.start()
    assert d.wait_state("up:0", "RUNNING")["pid"] == up
    d.wait_log(r"job:0 STOPPED -> EXITED \(it had exited before supervisord restarted",
               after=mark)
    fatal = d.wait_state("loop:0", "FATAL")
    assert "FATAL before supervisord restarted" in (fatal["fatal_reason"] or ""), fatal
    assert d.status_of("job:0")["state"] == "EXITED"
    assert runs.read_text() == "ran\n", "the finished job ran again"
    assert d.log_text().count("loop:0 spawned pid") == spawns, "the FATAL loop was started"
    # and an operator's start still starts them
    assert d.ctl("start", "job").returncode == 0
    wait_until(lambda: runs.read_text() == "ran\nran\n", 10, "the job run by the start")


def test_a_hidden_page_left_by_a_killed_create_is_swept_at_start(
        daemon_factory: DaemonFactory) -> None:
    """create_block makes a ctl page under ".<prefix>.<instance>.<hex>.new" and renames it over
    a squatted name; a daemon killed in between left it in /dev/shm for good. The next start
    removes ours; another user's file of that name is left alone."""
    d = daemon_factory({"w": {"command": ["sleep", "100000"], "start_seconds": 0.1}})
    ours = f"/dev/shm/.{d.prefix}.w:0.{os.urandom(8).hex()}.new"
    theirs = f"/dev/shm/.{d.prefix}.w:1.{os.urandom(8).hex()}.new"
    try:
        for path in (ours, theirs):
            with open(path, "wb") as f:
                f.write(b"\0" * 4096)
        os.chown(theirs, 65534, 65534)
        d.start()
        d.wait_state("w:0", "RUNNING")
        assert not os.path.lexists(ours), "the hidden page of a killed create was left"
        assert os.path.exists(theirs), "another user's file was removed"
    finally:
        for path in (ours, theirs):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
