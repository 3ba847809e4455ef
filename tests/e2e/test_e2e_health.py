"""A hung worker is restarted; a flood of output leaves the daemon's memory flat and the logs
rotated."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.daemon import StartedDaemon, pid_alive, rss_kib, write_script
from tests.support.wait import wait_until

HANGS = """\
import time
from worker import Worker

with Worker() as w:
    w.ready()
    for _ in range(5):
        w.heartbeat()
        time.sleep(0.1)
    print("hanging now", flush=True)
    time.sleep(1000)
"""

FLOOD = """\
import os, sys, time
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.05)
line = b"x" * 1023 + b"\\n"
chunk = line * 512                       # 512 KiB
for i in range(100):                     # 50 MiB over ~3 s: several rotation rounds
    os.write(1, chunk)
    time.sleep(0.03)
print("flood done", file=sys.stderr, flush=True)
time.sleep(1000)
"""
MB = 1024 * 1024


def test_hung_worker_is_restarted(daemon: StartedDaemon, tmp_path: Path) -> None:
    script = write_script(tmp_path, "hangs.py", HANGS)
    d = daemon({"h": {"command": [sys.executable, script], "heartbeat_timeout": 1,
                      "graceful_timeout": 0.5, "kill_timeout": 0.5}})
    first = d.wait_state("h:0", "RUNNING")["pid"]
    mark = d.log_mark()
    d.wait_log(r"h:0 RUNNING -> STOPPING \(heartbeat stale for \d+\.\d s; restarting; "
               r"signal 15\)$", timeout=15, after=mark)
    d.wait_log(r"h:0 STOPPING -> STARTING \(exited: killed by signal 15; restarting\)$",
               after=mark)
    row = wait_until(lambda: [r for r in [d.status_of("h:0")]
                              if r["state"] == "RUNNING" and r["pid"] != first],
                     15, "h:0 RUNNING with a new pid")[0]
    assert not pid_alive(first), f"the hung worker {first} is still alive"
    assert row["pid"] != first


def test_output_flood_rss_flat_and_rotated(daemon: StartedDaemon, tmp_path: Path) -> None:
    script = write_script(tmp_path, "flood.py", FLOOD)
    go = tmp_path / "go"
    d = daemon({"f": {"command": [sys.executable, script, str(go)], "start_seconds": 0.2,
                      "kill_timeout": 0.5, "stdout": {"max_bytes": "1MB", "backups": 2}}})
    d.wait_state("f:0", "RUNNING")
    for _ in range(3):                  # warm up the code paths status takes
        d.status_json()
    before = rss_kib(d.pid)
    go.touch()
    err = d.log_dir / "f-0.err.log"
    wait_until(lambda: "flood done" in err.read_text(), 60, "the worker to finish its flood")
    out = d.log_dir / "f-0.out.log"
    wait_until(lambda: out.stat().st_size <= MB, 10,
               f"{out} to be rotated below max_bytes after the flood")
    rotated = sorted(p.name for p in d.log_dir.iterdir() if p.name.startswith("f-0.out.log."))
    assert rotated == ["f-0.out.log.1", "f-0.out.log.2"], rotated
    for _ in range(3):
        d.status_json()
    after = rss_kib(d.pid)
    assert after - before < 10 * 1024, f"daemon RSS grew from {before} KiB to {after} KiB"
    assert d.status_of("f:0")["state"] == "RUNNING"
