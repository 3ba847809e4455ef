"""GET /api/v1/events against a real supervisord: the same events as `supervisorctl events`
in the same order with id = seq, the targets filter, resuming with Last-Event-ID (and from
further back than the ring keeps, and from another daemon's seq), what workers publish in
/metrics and /api/v1/status, and clients that never read: `supervisorctl status` stays prompt,
the daemon's memory bounded, and their slots come back after the stall timeout."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonFactory, DaemonProcess, rss_kib, write_script
from tests.support.http import EventStream, free_port, request
from tests.support.wait import wait_until

QUICK: dict[str, Any] = {"start_seconds": 0.2, "graceful_timeout": 0.5, "kill_timeout": 0.5}
SLEEPER: dict[str, Any] = {"command": "sleep 1000", **QUICK}


def ctl_events(d: DaemonProcess, *args: str) -> list[dict[str, Any]]:
    r = d.ctl("events", "--json", *args)
    assert r.returncode == 0 and r.stderr == "", r
    return [json.loads(line) for line in r.stdout.splitlines()]


def hello(s: EventStream) -> dict[str, Any]:
    m = s.next()
    assert m.get("event") == "hello" and m.get("retry") == "2000", m
    data: dict[str, Any] = m["data"]
    return data


def served(daemon_factory: DaemonFactory, workers: dict[str, Any],
           **sup: Any) -> tuple[DaemonProcess, int]:
    port = free_port()
    d = daemon_factory(workers, supervisor={"http": f"127.0.0.1:{port}", **sup}).start()
    return d, port


def test_events_in_order_across_stop_and_start(daemon_factory: DaemonFactory) -> None:
    d, port = served(daemon_factory, {"w": SLEEPER})
    d.wait_state("w:0", "RUNNING")
    with EventStream(port) as s:
        assert s.status == 200
        assert s.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert s.headers["cache-control"] == "no-store"
        before = hello(s)["last_seq"]
        assert before == len(ctl_events(d))
        assert d.ctl("stop", "w:0").returncode == 0
        assert d.ctl("start", "w:0").returncode == 0
        got = s.events(6)
    assert [(e["kind"], e["from"], e["to"]) for e in got] == [
        ("state", "RUNNING", "STOPPING"), ("exit", None, None), ("state", "STOPPING", "STOPPED"),
        ("state", "STOPPED", "STARTING"), ("state", "STARTING", "RUNNING"),
        ("ready", None, "RUNNING")], got
    assert [e["seq"] for e in got] == list(range(before + 1, before + 7))
    assert got == ctl_events(d)[before:before + 6], "the same events as supervisorctl events"


def test_targets_filter(daemon_factory: DaemonFactory) -> None:
    d, port = served(daemon_factory, {"a": SLEEPER, "b": {**SLEEPER, "numprocs": 2}})
    d.wait_state("b:1", "RUNNING")
    d.wait_state("a:0", "RUNNING")
    with EventStream(port, "/api/v1/events?targets=b:1,a") as s:
        hello(s)
        for target in ("b:0", "a:0", "b:1"):     # b:0 first: filtered out
            assert d.ctl("stop", target).returncode == 0
        got = s.events(6)
    assert [e["instance"] for e in got] == ["a:0"] * 3 + ["b:1"] * 3, got
    bad = request(port, "GET", "/api/v1/events?targets=nope")
    assert bad.status == 404 and "no such worker: nope" in bad.json()["err"], bad
    many = request(port, "GET", "/api/v1/events?targets=" + ",".join(["a"] * 65))
    assert many.status == 400, many
    opt = request(port, "GET", "/api/v1/events?follow=1")
    assert opt.status == 400 and "no option 'follow'" in opt.json()["err"], opt


def test_last_event_id_resumes(daemon_factory: DaemonFactory) -> None:
    d, port = served(daemon_factory, {"w": SLEEPER})
    d.wait_state("w:0", "RUNNING")
    assert d.ctl("stop", "w:0").returncode == 0
    everything = ctl_events(d)
    resume = everything[2]["seq"]
    with EventStream(port, headers={"Last-Event-ID": str(resume)}) as s:
        h = hello(s)
        assert h == {"last_seq": everything[-1]["seq"], "reset": False, "epoch": h["epoch"]}, h
        replay = s.events(len(everything) - 3)
        assert replay == everything[3:]
        assert d.ctl("start", "w:0").returncode == 0   # then live
        live = s.events(1)
        assert live[0]["seq"] == everything[-1]["seq"] + 1 and live[0]["to"] == "STARTING"
    with EventStream(port, "/api/v1/events?after=" + str(everything[-1]["seq"])) as s:
        hello(s)
        assert s.events(1)[0]["seq"] == everything[-1]["seq"] + 1   # ?after= is the same
    # a seq this daemon never reached: the client talked to an earlier daemon; all of ours
    with EventStream(port, headers={"Last-Event-ID": "99999"}) as s:
        h = hello(s)
        assert h["reset"] is True, h
        assert s.events(3) == ctl_events(d)[:3]
    for bad in ("x", "-1", "1.5", "9" * 30):
        r = request(port, "GET", "/api/v1/events", {"Last-Event-ID": bad})
        assert r.status == 400 and "Last-Event-ID" in r.json()["err"], (bad, r)


def test_an_id_of_the_previous_daemon_resumes_from_the_start_of_the_next(
        daemon_factory: DaemonFactory) -> None:
    """seq starts at 1 in each daemon process. A client that had seen id N of the daemon
    before, and reconnected once the next one's seq was past N, was given that daemon's events
    after N, silently missing its first N. The id names its daemon (EPOCH-SEQ): the client is
    told reset and gets every event the new daemon kept, from seq 1."""
    d, port = served(daemon_factory, {"w": SLEEPER})
    d.wait_state("w:0", "RUNNING")
    with EventStream(port, "/api/v1/events?after=0") as s:
        old = hello(s)
        m = s.next()
        m = s.next()                  # the second event's id: EPOCH-2
    assert m["id"] == f"{old['epoch']}-2", m
    d.stop()
    d.start()
    d.wait_state("w:0", "RUNNING")
    kept = ctl_events(d)
    assert kept[-1]["seq"] >= 3, kept          # the new daemon is past the old id's seq
    with EventStream(port, headers={"Last-Event-ID": m["id"]}) as s:
        h = hello(s)
        assert h["reset"] is True and h["epoch"] != old["epoch"], h
        assert s.events(len(kept)) == kept     # from seq 1, none skipped
    with EventStream(port, headers={"Last-Event-ID": f"{h['epoch']}-2"}) as s:
        assert hello(s)["reset"] is False      # this daemon's own id resumes after it
        assert s.events(len(kept) - 2) == kept[2:]


def test_resuming_from_further_back_than_the_ring_says_lost(
        daemon_factory: DaemonFactory) -> None:
    n = 30
    d, port = served(daemon_factory, {"f": {**SLEEPER, "numprocs": n, "start_seconds": 0}})
    wait_until(lambda: all(r["state"] == "RUNNING" for r in d.status_json()), 30, "all RUNNING")
    for _ in range(10):
        if ctl_events(d)[-1]["seq"] > 1100:           # the ring keeps 1024
            break
        for verb in ("stop", "start"):
            assert d.ctl("--timeout", "20", verb, "all").returncode == 0
    kept = ctl_events(d)
    assert len(kept) == 1024 and kept[0]["seq"] > 1, (len(kept), kept[-1])
    with EventStream(port, headers={"Last-Event-ID": "0"}) as s:
        hello(s)
        m = s.next()
        assert m["event"] == "lost" and m["data"]["lost"] == kept[0]["seq"] - 1, m
        assert "events lost" in m["data"]["err"]
        assert s.events(1)[0] == kept[0]


PUBLISHER = """\
from worker import Worker

with Worker() as w:
    w.status('batch 7 <b>"quoted"</b> \\\\ back')
    w.counter("jobs_done").inc(41)
    w.gauge("queue_depth").set(-7)
    w.ready()
    print("published", flush=True)
    w.wait_for_stop()
"""


def test_worker_data_in_metrics_and_status(daemon_factory: DaemonFactory,
                                           tmp_path: Path) -> None:
    script = write_script(tmp_path, "pub.py", PUBLISHER)
    d, port = served(daemon_factory, {"p": {"command": [sys.executable, script],
                                            "numprocs": 2, "graceful_timeout": 5},
                                      "plain": SLEEPER}, http_metrics_instances=1)
    d.wait_state("p:1", "RUNNING")
    wait_until(lambda: "published" in (d.log_dir / "p-1.out.log").read_text(), 10,
               "the worker published")
    text = request(port, "GET", "/metrics").text
    lines = [x for x in text.splitlines() if x.startswith("pyvisor_worker_metric")]
    # only the first instance has per-instance series (http_metrics_instances: 1)
    assert lines == [
        'pyvisor_worker_metric_total{worker="p",name="p:0",metric="jobs_done"} 41',
        'pyvisor_worker_metric{worker="p",name="p:0",metric="queue_depth"} -7'], lines
    assert "# TYPE pyvisor_worker_metric gauge" in text
    assert "# TYPE pyvisor_worker_metric_total counter" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (bash .ci/setup --test installs Debian's "
                    "prometheus package; with CI=true this skip fails the run)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    rows = {r["name"]: r for r in request(port, "GET", "/api/v1/status").json()["data"]}
    assert rows["p:1"]["status_text"] == 'batch 7 <b>"quoted"</b> \\ back'
    assert rows["p:1"]["metrics"] == [{"name": "jobs_done", "kind": "counter", "value": 41},
                                      {"name": "queue_depth", "kind": "gauge", "value": -7}]
    assert rows["plain:0"]["status_text"] is None and rows["plain:0"]["metrics"] == []


def stalled_client(port: int) -> socket.socket:
    """Asks for every event, then never reads (a small receive buffer: it fills soon)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return s


def connections(port: int) -> float | None:
    try:
        text = request(port, "GET", "/metrics", timeout=5).text
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("pyvisor_http_connections "):
            return float(line.split()[1])
    return None


def test_stalled_clients_cannot_stall_or_grow_the_daemon(
        daemon_factory: DaemonFactory) -> None:
    n = 25
    d, port = served(daemon_factory, {"f": {**SLEEPER, "numprocs": n, "start_seconds": 0}})
    wait_until(lambda: all(r["state"] == "RUNNING" for r in d.status_json()), 20,
               "all RUNNING")
    subs = [stalled_client(port) for _ in range(8)]
    try:
        wait_until(lambda: connections(port), 10, "the 8 streams open",
                   ok=lambda v: v is not None and v >= 9)
        rss0 = rss_kib(d.pid)
        for _ in range(6):
            for verb in ("stop", "start"):
                r = d.ctl("--timeout", "20", verb, "all")
                assert r.returncode == 0, r
            t0 = time.monotonic()
            r = d.ctl("--timeout", "10", "status")   # never stalled by the streams
            assert r.returncode == 0 and r.stdout.count("RUNNING") == n, r
            assert time.monotonic() - t0 < 5.0
        growth = rss_kib(d.pid) - rss0
        assert growth < 32 * 1024, f"the daemon grew by {growth} KiB"
        # the first client reads now: what it got is whole and in order
        s = subs[0]
        s.settimeout(0.5)
        got = bytearray()
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(1 << 20):
                got += chunk
        body = bytes(got).partition(b"\r\n\r\n")[2]
        seqs = [int(line[4:].partition(b"-")[2]) for line in body.split(b"\n")
                if line.startswith(b"id: ")]                   # id: EPOCH-SEQ
        assert seqs and seqs == sorted(set(seqs)), "events out of order or repeated"
        # the others never read: after the stall timeout (10 s) their slots come back (the
        # scrape's and the first client's are left)
        wait_until(lambda: connections(port), 40, "the stalled streams closed",
                   ok=lambda v: v is not None and v <= 2)
        d.wait_log(r"a stream.s client took nothing for 10 s")
    finally:
        for s in subs:
            s.close()
    assert d.ctl("status").returncode == 0


def test_event_streams_take_at_most_half_the_slots(daemon_factory: DaemonFactory) -> None:
    d, port = served(daemon_factory, {"w": SLEEPER})
    d.wait_state("w:0", "RUNNING")
    streams = []
    try:
        for _ in range(32):            # MAX_CONNECTIONS is 64
            s = EventStream(port)
            streams.append(s)
            assert s.status == 200
        refused = request(port, "GET", "/api/v1/events")
        assert refused.status == 503 and "event streams are open" in refused.text, refused
        assert request(port, "GET", "/metrics").status == 200   # scrapes still get in
        assert d.ctl("status").returncode == 0
    finally:
        for s in streams:
            s.close()

    def opens() -> bool:
        with EventStream(port, timeout=5) as s:
            return s.status == 200

    wait_until(opens, 10, "a stream once the others left")


def test_status_after_an_event_is_never_older_than_it(daemon_factory: DaemonFactory) -> None:
    # GET /api/v1/status is rendered at most once a second, but an event ends that: the page
    # applies an event and then fetches the table, which must not undo it
    d, port = served(daemon_factory, {"w": SLEEPER})
    d.wait_state("w:0", "RUNNING")
    states = [r["state"] for r in request(port, "GET", "/api/v1/status").json()["data"]]
    assert states == ["RUNNING"]
    t0 = time.monotonic()
    assert d.ctl("stop", "w:0").returncode == 0
    rows = request(port, "GET", "/api/v1/status").json()["data"]
    assert [r["state"] for r in rows] == ["STOPPED"], (rows, time.monotonic() - t0)
