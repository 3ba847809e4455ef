"""supervisorctl verbs against a real daemon: whole outputs and exit codes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.daemon import SUPERVISORCTL, DaemonFactory, StartedDaemon, pid_alive
from tests.support.wait import wait_until

QUICK: dict[str, Any] = {"start_seconds": 0.2, "graceful_timeout": 0.5, "kill_timeout": 0.5}
SLEEPER: dict[str, Any] = {"command": "sleep 1000", **QUICK}


def test_start_stop_restart_whole_output(daemon: StartedDaemon) -> None:
    d = daemon({"w": {**SLEEPER, "numprocs": 2}})
    d.wait_state("w:1", "RUNNING")
    first = d.pids()

    r = d.ctl("stop", "w:0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "w:0: stopped\n", ""), r
    assert not pid_alive(first["w:0"]), "stop returned but the process is still alive"
    r = d.ctl("status", "w:0")
    assert (r.returncode, r.stdout, r.stderr) == (
        0, "w:0  STOPPED   last: killed by signal 15\n", ""), r

    r = d.ctl("start", "w:0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "w:0: started\n", ""), r
    r = d.ctl("start", "w:0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "w:0: already running\n", ""), r
    started = d.pids()["w:0"]
    assert started != first["w:0"]

    r = d.ctl("restart", "w")
    assert (r.returncode, r.stdout, r.stderr) == (0, "w:0: restarted\nw:1: restarted\n", ""), r
    after = d.pids()
    assert after["w:0"] != started and after["w:1"] != first["w:1"], (first, started, after)
    assert not pid_alive(started) and not pid_alive(first["w:1"])

    r = d.ctl("stop", "all")
    assert (r.returncode, r.stdout, r.stderr) == (0, "w:0: stopped\nw:1: stopped\n", ""), r
    assert d.pids() == {}


def test_status_lines_and_json_fields(daemon: StartedDaemon) -> None:
    d = daemon({"w": SLEEPER})
    d.wait_state("w:0", "RUNNING")
    r = d.ctl("status")
    assert r.returncode == 0 and r.stderr == "", r
    assert re.fullmatch(r"w:0  RUNNING   pid \d+, uptime 0:00:\d\d, hb -, work -, cpu \d+\.\d\ds, "
                        r"mem \d+(\.\d)?[KMG]\n", r.stdout), r.stdout
    row = d.status_of("w:0")
    assert set(row) == {"name", "worker", "state", "pid", "uptime", "heartbeat_age", "work_done",
                        "cpu_seconds", "rss", "last_exit", "fatal_reason", "adopted",
                        "processes", "oom_kills", "cgroup", "restarts", "status_text",
                        "metrics"}, row
    assert row["name"] == "w:0" and row["worker"] == "w" and row["state"] == "RUNNING", row
    assert isinstance(row["pid"], int) and pid_alive(row["pid"]), row
    assert row["uptime"] >= 0 and row["rss"] > 0 and row["adopted"] is False, row
    assert row["heartbeat_age"] is None and row["work_done"] is None, row
    assert row["fatal_reason"] is None and row["last_exit"] is None, row


def test_no_daemon_exit_3_one_line(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({"w": SLEEPER})      # config written, daemon never started
    cfg = str(d.config_path)
    for verb in (["status"], ["stop", "w"], ["pid"]):
        r = d.ctl(*verb)
        assert (r.returncode, r.stdout, r.stderr) == (
            3, "", (f"supervisorctl: no supervisord is running for {cfg} "
                    f"(start it with: supervisord -c {cfg})\n")), (verb, r)


def test_unknown_target_exit_4(daemon: StartedDaemon) -> None:
    d = daemon({"w": SLEEPER, "v": SLEEPER})
    for verb in ("start", "stop", "restart", "status"):
        r = d.ctl(verb, "nope")
        assert (r.returncode, r.stdout, r.stderr) == (
            4, "", "no such worker: nope (known: v, w)\n"), (verb, r)
    r = d.ctl("stop", "w:7")
    assert r.returncode == 4 and r.stdout == "" and "w:7" in r.stderr, r
    assert d.ctl("status").returncode == 0


def test_pid_verb(daemon: StartedDaemon) -> None:
    d = daemon({"w": {**SLEEPER, "numprocs": 2}})
    d.wait_state("w:1", "RUNNING")
    r = d.ctl("pid")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{d.pid}\n", ""), r
    pids = d.pids()
    r = d.ctl("pid", "w")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{pids['w:0']}\n{pids['w:1']}\n", ""), r
    assert d.ctl("stop", "w:1").returncode == 0
    r = d.ctl("pid", "w")
    assert (r.returncode, r.stdout, r.stderr) == (5, "", f"{pids['w:0']}\nw:1: not running\n"), r


def test_signal_verb(daemon: StartedDaemon, tmp_path: Path) -> None:
    script = tmp_path / "usr1.py"
    script.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda s, f: print('got', signal.Signals(s).name, "
        "flush=True))\n"
        "print('armed', flush=True)\n"
        "while True:\n    time.sleep(0.05)\n")
    d = daemon({"w": {**QUICK, "command": [sys.executable, str(script)]}})
    d.wait_state("w:0", "RUNNING")
    out = d.log_dir / "w-0.out.log"
    wait_until(lambda: "armed" in out.read_text(), 10, "the worker to install its handler")
    for spelling in ("USR1", "SIGUSR1", str(int(signal.SIGUSR1)), "usr1"):
        r = d.ctl("signal", spelling, "w")
        assert (r.returncode, r.stdout, r.stderr) == (0, "w:0: sent SIGUSR1\n", ""), (spelling, r)
    wait_until(lambda: out.read_text().count("got SIGUSR1") == 4, 10,
               "four SIGUSR1 in the worker's output")
    r = d.ctl("signal", "NOPE", "w")
    assert r.returncode == 2 and r.stdout == "" and "NOPE" in r.stderr, r
    assert d.ctl("stop", "w").returncode == 0
    r = d.ctl("signal", "USR1", "w")
    assert (r.returncode, r.stdout, r.stderr) == (5, "", "w:0: not running (STOPPED)\n"), r


def test_tail_prints_last_lines(daemon: StartedDaemon) -> None:
    d = daemon({"w": {**QUICK, "command": "sh -c 'for i in $(seq 1 50); do echo line $i; done;"
                                          " exec sleep 1000'"}})
    d.wait_state("w:0", "RUNNING")
    expected = "line 48\nline 49\nline 50\n"
    seen: list[Any] = []

    def tail3() -> bool:
        seen[:] = [d.ctl("tail", "-n", "3", "w:0")]
        return bool(seen[0].stdout == expected)

    wait_until(tail3, 10, "tail -n 3 to show lines 48-50")
    r = seen[0]
    assert (r.returncode, r.stderr) == (0, ""), r
    r = d.ctl("tail", "w:0")
    assert r.returncode == 0 and r.stdout == "".join(f"line {i}\n" for i in range(41, 51)), r
    r = d.ctl("tail", "--stderr", "w:0")
    assert (r.returncode, r.stdout) == (0, ""), r


def test_fatal_start_exit_5_then_recover(daemon: StartedDaemon, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    cmd = f"sh -c 'test -e {flag} || exit 3; exec sleep 1000'"
    d = daemon({"crash": {**QUICK, "command": cmd, "start_retries": 2,
                          "backoff": {"initial": 0.05, "max": 0.1}}})
    d.wait_log(r"crash:0 exited 3 times within \d+\.\d\d s; giving up \(FATAL\)\. "
               r"Fix it, then: supervisorctl start crash$")
    log = d.log_text()
    assert re.search(r"^\S+ \S+ ERROR   crash:0 STARTING -> FATAL \(exited: exit status 3; "
                     r"3 failed starts\)$", log, re.MULTILINE), log
    assert len(re.findall(r"crash:0 STARTING -> BACKOFF \(exited: exit status 3; retry \d of 2",
                          log)) == 2, log
    r = d.ctl("status", "crash")
    assert r.returncode == 0 and re.fullmatch(
        r"crash:0  FATAL     exited 3 times within \d+\.\d\d s; giving up \(FATAL\)\. "
        r"Fix it, then: supervisorctl start crash\n", r.stdout), r
    assert d.status_of("crash:0")["fatal_reason"].startswith("exited 3 times within ")

    r = d.ctl("start", "crash")         # still broken: FATAL again, exit 5
    assert r.returncode == 5 and r.stdout == "" and re.fullmatch(
        r"crash:0: ERROR \(FATAL\) \(exited 3 times within \d+\.\d\d s; giving up \(FATAL\)\. "
        r"Fix it, then: supervisorctl start crash\)\n", r.stderr), r

    flag.touch()
    r = d.ctl("start", "crash")
    assert (r.returncode, r.stdout, r.stderr) == (0, "crash:0: started\n", ""), r
    row = d.status_of("crash:0")
    assert row["state"] == "RUNNING" and row["fatal_reason"] is None, row
    assert os.path.exists(f"/proc/{row['pid']}")


def test_shell_completion_offers_the_running_daemons_names(daemon: StartedDaemon) -> None:
    d = daemon({"web": {"command": "sleep 1000", "numprocs": 2, "start_seconds": 0}})
    d.wait_state("web:1", "RUNNING")
    r = subprocess.run(
        [SUPERVISORCTL], check=False, capture_output=True, text=True, timeout=60,
        env={**os.environ, "_SUPERVISORCTL_COMPLETE": "bash_complete",
             "COMP_WORDS": f"supervisorctl -c {d.config_path} stop w", "COMP_CWORD": "4"})
    assert (r.returncode, r.stdout) == (0, "plain,web\nplain,web:0\nplain,web:1\n"), r
