"""File descriptors at scale: the daemon raises its soft RLIMIT_NOFILE to the hard limit and
gives its workers the soft limit it was started with (across a re-exec too), holds one fd per
worker (its pidfd: no fd of a control block), and says clearly when a spawn runs out of fds."""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

from tests.support.daemon import DaemonFactory, DaemonProcess
from tests.support.wait import wait_until


def nofile(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of a process, from /proc/PID/limits."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def fd_kinds(pid: int) -> dict[str, int]:
    """How many fds of pid are pidfds, shm objects (/dev/shm), and everything."""
    kinds = {"pidfd": 0, "shm": 0, "all": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kinds["all"] += 1
        if target == "anon_inode:[pidfd]":
            kinds["pidfd"] += 1
        elif target.startswith("/dev/shm/"):
            kinds["shm"] += 1
    return kinds


def running(d: DaemonProcess, n: int) -> bool:
    return sum(1 for row in d.status_json() if row["state"] == "RUNNING") == n


def test_soft_limit_raised_in_the_daemon_and_restored_in_workers(
        daemon_factory: DaemonFactory) -> None:
    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 8192)
    d = daemon_factory({"w": {"command": "sleep 1000", "start_seconds": 0, "numprocs": 2}})
    d.start(nofile=(300, hard))
    wait_until(lambda: running(d, 2), 20, "2 RUNNING")
    assert nofile(d.pid) == (hard, hard)
    assert {nofile(pid) for pid in d.pids().values()} == {(300, hard)}
    d.wait_log(rf"file descriptors: soft limit 300 -> {hard} \(workers get 300\)")
    # a re-exec inherits the raised limit: its workers still get the one the daemon began with
    before = d.pids()
    assert d.ctl("reexec").returncode == 0
    wait_until(lambda: d.ctl("restart", "w:1").returncode == 0, 20, "restart after the re-exec")
    after = d.pids()
    assert after["w:0"] == before["w:0"] and after["w:1"] != before["w:1"]
    assert nofile(after["w:1"]) == (300, hard) and nofile(d.pid) == (hard, hard)
    assert "PYVISOR_WORKER_NOFILE" not in Path(f"/proc/{after['w:1']}/environ").read_text(
        errors="replace")


def test_the_daemon_holds_one_fd_per_worker(daemon_factory: DaemonFactory) -> None:
    n = 50
    d = daemon_factory({"w": {"command": "sleep 1000", "start_seconds": 0, "numprocs": n},
                        "lib": {"command": ["python3", "-m", "worker", "--unit-ms", "200"],
                                "numprocs": 2}})
    d.start()
    wait_until(lambda: running(d, n + 2), 60, f"{n + 2} RUNNING")
    assert d.ctl("status").returncode == 0          # reads every status page, then closes it
    kinds = fd_kinds(d.pid)
    assert kinds["pidfd"] == n + 2
    assert kinds["shm"] == 0, "no fd of a control block is kept"
    # the rest is the daemon's own (socket, loop, inotify, logs, locks, ...), not per worker
    assert kinds["all"] - kinds["pidfd"] < 30, kinds


def test_a_spawn_out_of_fds_says_so_in_status_and_log(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({"w": {"command": "sleep 1000", "start_seconds": 0, "numprocs": 40,
                              "autostart": False, "start_retries": 0}})
    d.start()
    held = fd_kinds(d.pid)["all"]
    limit = held + 12               # room for a few workers, not for 40
    soft, hard = nofile(d.pid)
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (limit, hard))
    r = d.ctl("start", "w")
    assert r.returncode != 0
    rows = d.status_json()
    fatal = [row for row in rows if row["state"] == "FATAL"]
    alive = [row for row in rows if row["state"] == "RUNNING"]
    assert fatal and alive, [(row["name"], row["state"]) for row in rows]
    assert all("supervisord is out of file descriptors (EMFILE" in row["fatal_reason"]
               and f"RLIMIT_NOFILE {limit}" in row["fatal_reason"] for row in fatal), fatal[0]
    assert "LimitNOFILE=" in fatal[0]["fatal_reason"]
    d.wait_log(r"w:\d+ STARTING -> FATAL \(spawn failed: .*out of file descriptors \(EMFILE")
    # with its limit back the daemon starts them
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert d.ctl("start", "w").returncode == 0
    assert running(d, 40)


def test_late_exit_statuses_never_cost_a_spawn_its_fds(daemon_factory: DaemonFactory) -> None:
    """Adopted processes that exit keep their pidfd a few seconds (LateStatus: their status
    once init reaps them). A restart of adopted instances near the fd limit then needed a
    pidfd for each old process and each new one at once: the spawns ran out of fds (FATAL
    with start_retries 0) although the daemon had room for its workers. The late statuses
    hold at most an eighth of the soft limit."""
    n = 60
    d = daemon_factory({"w": {"command": "sleep 1000", "start_seconds": 0, "numprocs": n,
                              "start_retries": 0, "kill_timeout": 2}})
    d.start()
    wait_until(lambda: running(d, n), 60, f"{n} RUNNING")
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    d.start()
    wait_until(lambda: running(d, n) and all(r["adopted"] for r in d.status_json()), 60,
               f"{n} adopted")
    held = fd_kinds(d.pid)["all"]
    soft, hard = nofile(d.pid)
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (held + n // 2 + 12, hard))
    d.ctl("restart", "w", timeout=60)
    rows = d.status_json()
    fatal = [(r["name"], r["fatal_reason"]) for r in rows if r["state"] == "FATAL"]
    assert not fatal, fatal[:3]
    assert running(d, n)
