"""A stop of many ADOPTED instances at once (their exits reach the new daemon by pidfd alone,
booked one loop turn at a time): every instance ends with its whole tree, the stop reports
success, each exit status is learned once init has reaped the leader, and the daemon keeps
no pidfd of a process that is gone."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from tests.support.daemon import DaemonFactory, DaemonProcess, pid_alive
from tests.support.wait import wait_until

N = 12
MODES = [pytest.param(True, id="cgroup"), pytest.param(False, id="process-group")]


def _pidfds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[pidfd]"
    return n


def _kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _sigkill_and_restart(d: DaemonProcess) -> None:
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    d.start()


@pytest.mark.parametrize("cgroups", MODES)
def test_stop_all_of_adopted_ends_every_tree(daemon_factory: DaemonFactory, tmp_path: Path,
                                             cgroups: bool) -> None:
    kids = tmp_path / "children.pids"
    # each leader has a child that ignores SIGTERM: only the tree rule ends it
    script = (f"sh -c 'trap \"\" TERM; echo $$ >> {kids}; exec sleep 1000' & "
              "exec sleep 1000")
    d = daemon_factory({"w": {"command": ["sh", "-c", script], "numprocs": N,
                              "start_seconds": 0.1, "kill_timeout": 2}},
                       supervisor={"cgroups": cgroups}).start()
    for i in range(N):
        d.wait_state(f"w:{i}", "RUNNING")
    children = wait_until(lambda: [int(x) for x in kids.read_text().split()]
                          if kids.exists() and len(kids.read_text().split()) >= N else None,
                          10, f"{N} children")
    leaders = d.pids()
    _sigkill_and_restart(d)
    rows = d.status_json()
    assert sum(r["state"] == "RUNNING" and r["adopted"] for r in rows) == N
    assert {r["name"]: r["pid"] for r in rows} == leaders

    r = d.ctl("stop", "all")
    assert r.returncode == 0, r.stderr + r.stdout
    rows = d.status_json()
    assert [r["state"] for r in rows] == ["STOPPED"] * N
    assert not [p for p in [*children, *leaders.values()] if pid_alive(p)], \
        "stop all of adopted instances left part of a tree running"
    assert "exited while" not in d.log_text()

    # the status of each leader, not known at its exit (not our child, not reaped yet by
    # init), is learned once init reaps it; then no pidfd of a gone process is left
    assert d.proc is not None
    daemon_pid = d.proc.pid
    wait_until(lambda: _pidfds(daemon_pid) == 0, 15, "the daemon to close every pidfd")
    if _kernel() >= (6, 15):      # PIDFD_INFO_EXIT (else the status stays unknown)
        text = d.log_text()
        learned = sum(f"w:{i} the exit status is known now" in text for i in range(N))
        unknown = sum(1 for r in d.status_json() if "unknown" in (r["last_exit"] or ""))
        assert learned + (N - unknown) >= N, text[-3000:]
