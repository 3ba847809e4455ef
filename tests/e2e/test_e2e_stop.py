"""Stopping: graceful at a unit boundary, escalation to SIGKILL, process groups, SIGTERM."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.support.daemon import StartedDaemon, pid_alive, pids_with_block_prefix, write_script
from tests.support.wait import wait_until

UNIT_WORKER = """\
import time
from worker import Worker

with Worker() as w:
    w.ready()
    n = 0
    while not w.should_stop:
        with w.busy():
            time.sleep(0.05)
        n += 1
        w.heartbeat()
        w.add_work()
        print(f"unit {n} done", flush=True)
    print(f"stopping at unit boundary after unit {n}", flush=True)
"""

STUBBORN_WORKER = """\
import signal, time
from worker import Worker

signal.signal(signal.SIGTERM, signal.SIG_IGN)
w = Worker()
w.ready()
print("ignoring everything", flush=True)
while True:          # never looks at should_stop
    time.sleep(0.05)
"""


def test_graceful_stop_at_unit_boundary(daemon: StartedDaemon, tmp_path: Path) -> None:
    script = write_script(tmp_path, "units.py", UNIT_WORKER)
    d = daemon({"u": {"command": [sys.executable, script], "graceful_timeout": 5,
                      "kill_timeout": 1}})
    d.wait_state("u:0", "RUNNING")
    out = d.log_dir / "u-0.out.log"
    wait_until(lambda: "unit 3 done" in out.read_text(), 10, "three units of work")
    pid = d.pids()["u:0"]
    mark = d.log_mark()
    r = d.ctl("stop", "--graceful", "u")
    assert (r.returncode, r.stdout, r.stderr) == (0, "u:0: stopped\n", ""), r
    assert not pid_alive(pid)
    d.wait_log(r"u:0 RUNNING -> STOPPING \(stop requested; graceful, up to 5\.00 s\)$",
               after=mark)
    d.wait_log(r"u:0 STOPPING -> STOPPED \(exited: exit status 0\)$", after=mark)
    assert "signal" not in d.log_text()[mark:], d.log_text()[mark:]
    lines = out.read_text().splitlines()
    last = re.fullmatch(r"stopping at unit boundary after unit (\d+)", lines[-1])
    assert last and lines[-2] == f"unit {last.group(1)} done", lines[-5:]
    row = d.status_of("u:0")
    assert row["state"] == "STOPPED" and row["work_done"] in (None, int(last.group(1))), row
    r = d.ctl("status", "u:0")
    assert r.stdout == "u:0  STOPPED   last: exit status 0\n", r


def test_escalation_to_sigkill(daemon: StartedDaemon, tmp_path: Path) -> None:
    script = write_script(tmp_path, "stubborn.py", STUBBORN_WORKER)
    d = daemon({"s": {"command": [sys.executable, script], "graceful_timeout": 0.5,
                      "kill_timeout": 0.5}})
    d.wait_state("s:0", "RUNNING")
    pid = d.pids()["s:0"]
    mark = d.log_mark()
    r = d.ctl("stop", "--graceful", "s")
    assert (r.returncode, r.stdout, r.stderr) == (0, "s:0: stopped\n", ""), r
    assert not pid_alive(pid)
    text = d.log_text()[mark:]
    expected = [
        r"s:0 RUNNING -> STOPPING \(stop requested; graceful, up to 0\.50 s\)",
        r"s:0 did not exit within 0\.50 s of the stop command; sending signal 15",
        r"s:0 still alive 0\.50 s after signal 15; sending signal 9",
        r"s:0 STOPPING -> STOPPED \(exited: killed by signal 9\)",
    ]
    found = [m.group(0) for m in re.finditer(r"s:0 .*", text)]
    assert len(found) == len(expected), text
    for line, pattern in zip(found, expected, strict=True):
        assert re.fullmatch(pattern, line), (pattern, text)
    assert d.ctl("status", "s:0").stdout == "s:0  STOPPED   last: killed by signal 9\n"


def test_grandchildren_are_gone_after_stop(daemon: StartedDaemon) -> None:
    d = daemon({"g": {"command": "sh -c 'sleep 1000 & sleep 1000 & wait'",
                      "start_seconds": 0.2, "graceful_timeout": 0.5, "kill_timeout": 0.5}})
    d.wait_state("g:0", "RUNNING")
    family = wait_until(lambda: [p for p in [pids_with_block_prefix(d.prefix)] if len(p) == 3],
                        10, "sh and its two sleeps")[0]
    r = d.ctl("stop", "g")
    assert (r.returncode, r.stdout, r.stderr) == (0, "g:0: stopped\n", ""), r
    wait_until(lambda: not [p for p in family if pid_alive(p)], 5,
               f"every process of the group {family} to be gone")
    assert pids_with_block_prefix(d.prefix) == []


def test_sigterm_stops_everything_and_exits_0(daemon: StartedDaemon, tmp_path: Path) -> None:
    script = write_script(tmp_path, "units.py", UNIT_WORKER)
    d = daemon({"u": {"command": [sys.executable, script], "numprocs": 2,
                      "graceful_timeout": 5, "kill_timeout": 1},
                "p": {"command": "sh -c 'sleep 1000 & wait'", "start_seconds": 0.2,
                      "kill_timeout": 0.5, "priority": 1}})
    d.wait_state("u:1", "RUNNING")
    d.wait_state("p:0", "RUNNING")
    workers = pids_with_block_prefix(d.prefix)
    assert len(workers) == 4, workers
    assert d.stop(timeout=30) == 0, d.log_text()
    log = d.log_text()
    assert "shutting down: stopping every worker gracefully" in log
    assert re.search(r"u:0 STOPPING -> STOPPED \(exited: exit status 0\)", log), log
    assert re.search(r"u:1 STOPPING -> STOPPED \(exited: exit status 0\)", log), log
    assert log.rstrip().endswith("every worker stopped; supervisord exits"), log
    # priority 1 starts first, so it stops last
    assert log.index("p:0 RUNNING -> STOPPING") > log.index("u:1 STOPPING -> STOPPED"), log
    assert not [p for p in workers if pid_alive(p)]
    assert not d.socket.exists(), "the control socket outlived the daemon"


def test_shutdown_timeout_bounds_the_whole_shutdown(daemon: StartedDaemon, tmp_path: Path) -> None:
    # shutdown_timeout was accepted, documented (systemd/README sets TimeoutStopSec from it)
    # and never read: this shutdown took two kill_timeouts of 60 s and a graceful one.
    stubborn = write_script(tmp_path, "stubborn.py", STUBBORN_WORKER)
    ignore = "sh -c 'trap \"\" TERM; while true; do sleep 0.1; done'"
    d = daemon({"a": {"command": ignore, "start_seconds": 0.2, "kill_timeout": 60},
                "b": {"command": [sys.executable, stubborn], "graceful_timeout": 60,
                      "kill_timeout": 60, "priority": 2},
                "c": {"command": ignore, "start_seconds": 0.2, "kill_timeout": 60,
                      "priority": 1}},
               supervisor={"shutdown_timeout": 1})
    for name in ("a:0", "b:0", "c:0"):
        d.wait_state(name, "RUNNING")
    leaders = list(d.pids().values())
    assert len(leaders) == 3, leaders
    assert d.stop(timeout=30) == 0, d.log_text()
    log = d.log_text()
    assert re.search(r"shutdown_timeout \(1 s\) is over: killing what is still stopping "
                     r"\(a:0\) and every worker stopped later", log), log
    for name in ("a:0", "b:0", "c:0"):
        assert re.search(rf"{name} STOPPING -> STOPPED \(exited: killed by signal 9\)", log), log
    assert log.rstrip().endswith("every worker stopped; supervisord exits"), log
    assert not [p for p in leaders if pid_alive(p)]
    assert pids_with_block_prefix(d.prefix) == []     # nor any of their children
