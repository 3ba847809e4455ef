"""What workers publish (status text, counters, gauges) as supervisorctl status shows it, with
a real daemon; and a hostile worker that scribbles its status page cannot disturb status."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.support.daemon import StartedDaemon, write_script
from tests.support.wait import wait_until

PUBLISHER = """\
from worker import Worker

with Worker() as w:
    w.status("loading model 3/5")
    w.counter("jobs").inc(41)
    w.counter("jobs").inc()
    w.gauge("queue_depth").set(-7)
    w.ready()
    print("published", flush=True)
    w.wait_for_stop()
"""

# Maps its own status page by hand and writes garbage where the text and metrics live, with
# the text seqlock left odd (a write that never ends) and every metric slot claimed.
SCRIBBLER = """\
import os
from worker import Worker, block as B

w = Worker()
w.ready()
mm = w._status_mm
mm[B.SOFF_TEXT_SEQ:B.SOFF_TEXT_SEQ + 8] = (1).to_bytes(4, "little") + (9999).to_bytes(4, "little")
mm[B.SOFF_TEXT:B.SOFF_TEXT + B.TEXT_SIZE] = b"\\x1b[2J" * (B.TEXT_SIZE // 4)
mm[B.SOFF_METRIC_KINDS:B.SOFF_METRIC_KINDS + B.METRIC_COUNT] = bytes(range(1, 17))
mm[B.SOFF_METRICS:B.SOFF_APP] = os.urandom(B.SOFF_APP - B.SOFF_METRICS)
print("scribbled", flush=True)
w.wait_for_stop()
w.close()
"""


def test_status_shows_text_and_metrics(daemon: StartedDaemon, tmp_path: Path) -> None:
    script = write_script(tmp_path, "pub.py", PUBLISHER)
    d = daemon({"p": {"command": [sys.executable, script], "graceful_timeout": 5}})
    d.wait_state("p:0", "RUNNING")
    out = d.log_dir / "p-0.out.log"
    wait_until(lambda: "published" in out.read_text(), 10, "the worker published")
    r = d.ctl("status")
    assert r.returncode == 0 and r.stderr == "", r
    assert re.fullmatch(r"p:0  RUNNING   pid \d+, uptime .*  \[loading model 3/5\]\n",
                        r.stdout), r.stdout
    row = d.status_of("p:0")
    assert row["status_text"] == "loading model 3/5"
    assert row["metrics"] == [{"name": "jobs", "kind": "counter", "value": 42},
                              {"name": "queue_depth", "kind": "gauge", "value": -7}]
    r = d.ctl("status", "-v", "p")
    assert r.returncode == 0, r
    assert r.stdout.splitlines()[1:] == ["    status: loading model 3/5",
                                         "    jobs (counter) = 42",
                                         "    queue_depth (gauge) = -7"], r.stdout
    r = d.ctl("stop", "--graceful", "p")
    assert r.returncode == 0, r
    row = d.status_of("p:0")
    assert (row["status_text"], row["metrics"]) == (None, []), row


def test_a_scribbled_status_page_reads_as_clean_unknowns(
    daemon: StartedDaemon, tmp_path: Path
) -> None:
    script = write_script(tmp_path, "scribble.py", SCRIBBLER)
    d = daemon({"s": {"command": [sys.executable, script], "graceful_timeout": 5},
                "ok": {"command": "sleep 1000", "start_seconds": 0.2}})
    d.wait_state("s:0", "RUNNING")
    d.wait_state("ok:0", "RUNNING")       # its row must read as any row does, beside s:0's
    out = d.log_dir / "s-0.out.log"
    wait_until(lambda: "scribbled" in out.read_text(), 10, "the worker scribbled")
    r = d.ctl("status")
    assert r.returncode == 0 and r.stderr == "" and "\x1b" not in r.stdout, r
    assert re.search(r"^ok:0  RUNNING ", r.stdout, re.M), r.stdout
    row = d.status_of("s:0")
    assert row["status_text"] is None, row   # the seqlock never settles: no text
    for m in row["metrics"]:                  # random names almost never pass; any that do
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,23}", m["name"]), m   # are clean
    assert d.ctl("stop", "--graceful", "s").returncode == 0
