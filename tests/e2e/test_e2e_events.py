"""supervisorctl events against a real daemon: the whole sequence across a stop, a start and a
crash; follow mode seeing a change live; the TARGETS filter; and subscribers that never read
while hundreds of state changes happen (status stays prompt, the daemon's memory bounded)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.child import Lines
from tests.support.daemon import SUPERVISORCTL, DaemonProcess, StartedDaemon, rss_kib, write_script
from tests.support.wait import wait_until

QUICK: dict[str, Any] = {"start_seconds": 0.2, "graceful_timeout": 0.5, "kill_timeout": 0.5}
SLEEPER: dict[str, Any] = {"command": "sleep 1000", **QUICK}
READY_WORKER = """\
from worker import Worker

with Worker() as w:
    w.ready()
    w.wait_for_stop()
"""


def events(d: DaemonProcess, *args: str) -> list[dict[str, Any]]:
    r = d.ctl("events", "--json", *args)
    assert r.returncode == 0 and r.stderr == "", r
    return [json.loads(line) for line in r.stdout.splitlines()]


def shape(evs: list[dict[str, Any]]) -> list[tuple[str, str, str | None, str | None, bool]]:
    return [(e["instance"], e["kind"], e["from"], e["to"], e["pid"] is not None) for e in evs]


def test_the_whole_sequence_across_stop_start_and_crash(daemon: StartedDaemon) -> None:
    d = daemon({"w": SLEEPER})
    d.wait_state("w:0", "RUNNING")
    first = d.pids()["w:0"]
    assert d.ctl("stop", "w:0").returncode == 0
    assert d.ctl("start", "w:0").returncode == 0
    second = d.pids()["w:0"]
    os.kill(second, signal.SIGKILL)
    wait_until(lambda: (d.pids().get("w:0") or second) != second
               and d.status_of("w:0")["state"] == "RUNNING", 15, "w:0 restarted after the kill")
    third = d.pids()["w:0"]
    evs = events(d)
    run, start = ("w:0", "ready", None, "RUNNING", True), ("w:0", "state", "STARTING", "RUNNING",
                                                           True)
    assert shape(evs) == [
        ("w:0", "state", "STOPPED", "STARTING", False), start, run,       # autostart
        ("w:0", "state", "RUNNING", "STOPPING", True),                    # stop
        ("w:0", "exit", None, None, True),
        ("w:0", "state", "STOPPING", "STOPPED", True),
        ("w:0", "state", "STOPPED", "STARTING", False), start, run,       # start
        ("w:0", "exit", None, None, True),                                # the SIGKILL
        ("w:0", "state", "RUNNING", "STARTING", False), start, run,       # restarted
    ], evs
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    assert [e["time"] for e in evs] == sorted(evs_time := [e["time"] for e in evs]), evs_time
    assert [e["pid"] for e in evs if e["kind"] == "exit"] == [first, second]
    assert evs[4]["reason"] == "killed by signal 15" and evs[9]["reason"] == "killed by signal 9"
    assert evs[-1]["pid"] == third and evs[-1]["reason"] == "after start_seconds"
    # the human form: one line per event, in the same order
    r = d.ctl("events", "w:0")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == len(evs), r
    assert lines[3].endswith(f" w:0 state RUNNING -> STOPPING, pid {first}, "
                             "stop requested; signal 15"), lines[3]
    assert lines[4].endswith(f" w:0 exit, pid {first}, killed by signal 15"), lines[4]


@contextlib.contextmanager
def follower(d: DaemonProcess, *args: str) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    p = subprocess.Popen([SUPERVISORCTL, "-c", str(d.config_path), "events", "-f", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    try:
        yield p, Lines(p.stdout)
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


def test_follow_sees_a_change_live_and_ctrl_c_exits_0(daemon: StartedDaemon,
                                                       tmp_path: Path) -> None:
    script = write_script(tmp_path, "ready.py", READY_WORKER)
    d = daemon({"r": {"command": [sys.executable, script], "graceful_timeout": 5}})
    d.wait_state("r:0", "RUNNING")
    with follower(d, "--json") as (p, lines):
        line = lines.expect('"kind": "ready"')          # the backlog comes first
        assert json.loads(line)["reason"] == "reported by the worker"
        assert d.ctl("stop", "--graceful", "r:0").returncode == 0
        stopped = json.loads(lines.expect('"to": "STOPPED"'))
        assert stopped["from"] == "STOPPING" and stopped["reason"] == "exited: exit status 0"
        assert d.ctl("start", "r:0").returncode == 0
        lines.expect('"kind": "ready"')
        p.send_signal(signal.SIGINT)
        assert p.wait(10) == 0
        assert p.stderr is not None and p.stderr.read() == ""
    kinds = [json.loads(x)["kind"] for x in lines.seen]
    assert kinds == ["state", "state", "ready",            # the backlog: autostart
                     "state", "exit", "state",             # stop
                     "state", "state", "ready"], lines.seen


def test_targets_filter(daemon: StartedDaemon) -> None:
    d = daemon({"a": {**SLEEPER, "numprocs": 2}, "b": SLEEPER})
    for name in ("a:0", "a:1", "b:0"):
        d.wait_state(name, "RUNNING")
    assert {e["instance"] for e in events(d, "a")} == {"a:0", "a:1"}
    assert {e["instance"] for e in events(d, "a:1", "b")} == {"a:1", "b:0"}
    assert {e["instance"] for e in events(d)} == {"a:0", "a:1", "b:0"}
    r = d.ctl("events", "nope")
    assert (r.returncode, r.stdout) == (4, ""), r
    assert r.stderr == "no such worker: nope (known: a, b)\n", r
    with follower(d, "b") as (p, lines):
        lines.expect("b:0 ready")
        assert d.ctl("restart", "a", "b").returncode == 0
        lines.expect("b:0 ready (RUNNING)")
        p.send_signal(signal.SIGINT)
        assert p.wait(10) == 0
    assert all(" b:0 " in x for x in lines.seen), lines.seen


def stalled_subscriber(d: DaemonProcess) -> socket.socket:
    """A raw client that asks to follow every event and then never reads."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(d.socket))
    s.sendall(b'{"cmd": "events", "targets": ["all"], "opts": {"follow": true, "json": true}}\n')
    return s


def test_subscribers_that_never_read_cannot_stall_or_grow_the_daemon(
    daemon: StartedDaemon
) -> None:
    n = 25
    d = daemon({"f": {"command": "sleep 1000", "numprocs": n, "start_seconds": 0,
                      "kill_timeout": 0.5}})
    wait_until(lambda: all(r["state"] == "RUNNING" for r in d.status_json()), 20,
               "all RUNNING")
    subs = [stalled_subscriber(d) for _ in range(8)]
    try:
        rss0 = rss_kib(d.pid)
        changes = 0
        while changes < 200:
            for verb in ("stop", "start"):
                r = d.ctl("--timeout", "20", verb, "all")
                assert r.returncode == 0, r
                changes += 2 * n        # stop: RUNNING->STOPPING->STOPPED; start: 2 more
            r = d.ctl("--timeout", "10", "status")   # never stalled by the subscribers
            assert r.returncode == 0 and r.stdout.count("RUNNING") == n, r
        growth = rss_kib(d.pid) - rss0
        assert growth < 32 * 1024, f"the daemon grew by {growth} KiB"
        # the first subscriber reads now: every event it got is whole and in order
        s = subs[0]
        s.settimeout(0.5)
        got = bytearray()
        with contextlib.suppress(TimeoutError):
            while chunk := s.recv(1 << 20):
                got += chunk
        docs = [json.loads(x) for x in bytes(got).splitlines()]
        seqs = [json.loads(x["out"])["seq"] for x in docs if x.get("stream") and "out" in x]
        lost = sum(x.get("lost", 0) for x in docs)
        total = 3 * n + 6 * n * (changes // (4 * n))   # autostart, then stop/start cycles
        assert seqs == sorted(set(seqs)), "events out of order or repeated"
        if lost:
            assert len(seqs) + lost <= total, (len(seqs), lost, total)
        else:   # the kernel's socket buffer held them all: every one, in order
            assert seqs == list(range(1, total + 1)), (len(seqs), total)
    finally:
        for s in subs:
            s.close()
    wait_until(lambda: d.ctl("status").returncode == 0, 10, "status after the subscribers left")


def test_adoption_is_an_event_and_a_shutdown_ends_the_stream(daemon: StartedDaemon) -> None:
    d = daemon({"w": {"command": "sleep 100000", "start_seconds": 0.2, "kill_timeout": 2}})
    pid = d.wait_state("w:0", "RUNNING")["pid"]
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    d.start()
    wait_until(lambda: d.status_of("w:0")["adopted"], 10, "w:0 adopted")
    evs = events(d)  # a new daemon: a new bus, starting at 1
    assert [(e["seq"], e["kind"], e["pid"]) for e in evs[:1]] == [(1, "adopted", pid)], evs
    assert evs[0]["to"] == "RUNNING"
    assert d.pids() == {"w:0": pid}
    with follower(d, "--json") as (p, lines):
        lines.expect('"kind": "adopted"')
        assert d.stop() == 0    # shutdown: the stream ends without a final reply
        assert p.wait(10) == 1
        assert p.stderr is not None
        assert p.stderr.read() == ("supervisorctl: supervisord ended the event stream (it shut "
                                   "down, re-executed or dropped this client)\n")


def raw_request(d: DaemonProcess, doc: object) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(d.socket))
        s.sendall(json.dumps(doc).encode() + b"\n")
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    reply = json.loads(buf.splitlines()[0])
    assert isinstance(reply, dict)
    return reply


def test_bad_events_requests_get_usage_replies(daemon: StartedDaemon) -> None:
    d = daemon({"w": SLEEPER})
    for opts, targets, err in [
        ({"follow": "yes"}, ["all"], "option 'follow' must be true or false\n"),
        ({"json": 1}, ["all"], "option 'json' must be true or false\n"),
        ({}, 5, "targets must be a list of names\n"),
        ({}, [["w"]], "targets must be a list of names\n"),
    ]:
        reply = raw_request(d, {"cmd": "events", "targets": targets, "opts": opts})
        assert (reply["code"], reply["err"]) == (2, err), reply
    assert d.ctl("status").returncode == 0
