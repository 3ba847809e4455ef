"""Adoption after a daemon SIGKILL, attacked after it was made cheaper (one /proc read per
block, batched log lines, deferred rotation checks): what the new daemon logs and does must be
what the old path logged and did. Real daemons, real workers, real SIGKILLs."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.support.daemon import DaemonFactory, DaemonProcess, pid_alive
from tests.support.wait import wait_until


def _kill_daemon(d: DaemonProcess) -> None:
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)


def test_adoption_lines_keep_their_order_with_lines_logged_directly(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """A worker whose leader exited while the daemon was down, leaving a child in its cgroup:
    the adopting daemon says it exited, and only then that it kills what the leader left (a
    line the trees write directly, not through the adoption's batch)."""
    left = tmp_path / "left.pid"
    d = daemon_factory({"w": {"command": ["sh", "-c", f"sleep 100000 & echo $! > {left}; "
                                          "exec sleep 100000"],
                              "start_seconds": 0.1, "kill_timeout": 2, "restart": "never"}})
    d.start()
    if "one cgroup per instance" not in d.log_text():
        pytest.skip("no cgroups here: the daemon cannot find what an exited leader left")
    leader = d.wait_state("w:0", "RUNNING")["pid"]
    wait_until(lambda: left.exists() and left.read_text().strip(), 10, "the child's pid")
    child = int(left.read_text())
    _kill_daemon(d)
    os.kill(leader, signal.SIGKILL)
    wait_until(lambda: not pid_alive(leader), 10, "the leader gone")
    mark = d.log_mark()
    d.start()
    d.wait_state("w:0", "EXITED", timeout=20)
    wait_until(lambda: not pid_alive(child), 10, "the leader's child killed")
    text = d.log_text()[mark:]
    said = re.search(r"w:0 exited while supervisord was down", text)
    killing = re.search(r"w:0 killing what its exited leader left in its cgroup", text)
    assert said and killing, text
    assert said.start() < killing.start(), f"lines out of order:\n{text}"
