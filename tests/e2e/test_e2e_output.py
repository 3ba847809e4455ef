"""The schema a migrating user needs (issue 15): {index}/{name}/{instance} in command and
environment, umask, discarded output, output to the daemon's own stdout, stop_mode."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tests.support.daemon import SUPERVISORD, DaemonFactory, StartedDaemon, write_script
from tests.support.wait import wait_until

QUICK: dict[str, Any] = {"start_seconds": 0.2, "graceful_timeout": 5, "kill_timeout": 0.5}


def _log(d: Any, name: str) -> str:
    return Path(d.log_dir, name).read_text()


def test_index_name_instance_in_command_and_environment(daemon: StartedDaemon) -> None:
    d = daemon({"web": {
        "command": ["sh", "-c",
                    'echo "port 80{index} $X {{index}} ${HOME:+home}"; exec sleep 1000'],
        "numprocs": 2, "environment": {"X": "{instance} of {name}"}, **QUICK}})
    d.wait_state("web:1", "RUNNING")
    wait_until(lambda: _log(d, "web-1.out.log"), 10, "web:1's output")
    assert _log(d, "web-0.out.log") == "port 800 web:0 of web {index} home\n"
    assert _log(d, "web-1.out.log") == "port 801 web:1 of web {index} home\n"


def test_umask(daemon: StartedDaemon) -> None:
    d = daemon({"w": {"command": ["sh", "-c", "umask; exec sleep 1000"], "umask": "027",
                      **QUICK},
                "v": {"command": ["sh", "-c", "umask; exec sleep 1000"], "umask": "0o077",
                      **QUICK}})
    d.wait_state("v:0", "RUNNING")
    wait_until(lambda: _log(d, "v-0.out.log"), 10, "v:0's output")
    assert (_log(d, "w-0.out.log"), _log(d, "v-0.out.log")) == ("0027\n", "0077\n")


def test_umask_refused_with_its_fix(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({"w": {"command": "true", "umask": "0999"}})
    r = subprocess.run([SUPERVISORD, "-c", str(d.config_path), "--check"],
                       capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", (
        f"{d.config_path}:8: workers.w.umask: must be an octal umask from '000' to '777', "
        "such as '022' (got '0999')\n")), r


def test_discarded_output_dev_null_and_null(daemon: StartedDaemon) -> None:
    """path: /dev/null for numprocs > 1 passes --check and spawns (it used to fail at spawn),
    and null discards too; no log file is made for either."""
    d = daemon({"a": {"command": ["sh", "-c", "echo out; echo err >&2; exec sleep 1000"],
                      "numprocs": 2, "stdout": {"path": "/dev/null"}, "stderr": None, **QUICK},
                "b": {"command": ["sh", "-c", "echo out; exec sleep 1000"], "stdout": None,
                      "stderr": "stdout", **QUICK}})
    r = subprocess.run([SUPERVISORD, "-c", str(d.config_path), "--check"],
                       capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{d.config_path}: OK (2 workers)\n", "")
    for inst in ("a:0", "a:1", "b:0"):
        d.wait_state(inst, "RUNNING")
    assert not d.log_dir.exists() or sorted(os.listdir(d.log_dir)) == [], os.listdir(d.log_dir)


def test_a_device_path_is_refused_with_the_two_ways(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({"w": {"command": "true", "stdout": {"path": "/dev/stdout"}}})
    r = subprocess.run([SUPERVISORD, "-c", str(d.config_path), "--check"],
                       capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", (
        f"{d.config_path}:9: workers.w.stdout.path: /dev/stdout is not a file; output goes "
        "to regular files. To send it to the daemon's stdout (containers): daemon; to "
        "discard it: null, e.g. stdout: daemon\n")), r


def _started(d: Any, stdout: Any) -> subprocess.Popen[bytes]:
    """Start d's daemon with stdout to ``stdout`` (stderr to its log file) and hand it to d."""
    err = open(d.out_path, "ab")      # noqa: SIM115 (closed below, the child has its copy)
    try:
        proc = subprocess.Popen([SUPERVISORD, "-c", str(d.config_path)], stdout=stdout,
                                stderr=err, stdin=subprocess.DEVNULL, cwd=d.dir)
    finally:
        err.close()
    d.proc = proc
    wait_until(lambda: d.ctl("status").returncode == 0, 20, "the daemon to answer")
    return proc


def test_output_to_the_daemons_stdout(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """One line per output line with the instance before it; stderr: stdout on the same
    stream; a 40,000-byte line cut at 16 KiB; a partial line printed when the process exits."""
    d = daemon_factory({"w": {
        "command": ["sh", "-c", 'echo one; echo two >&2; printf "%040000d" 0; echo; '
                    "printf partial; exec sleep 1000"],
        "stdout": "daemon", "stderr": "stdout", **QUICK}})
    out_path = tmp_path / "daemon.stdout"
    with open(out_path, "wb") as out:
        _started(d, out)
    wait_until(lambda: out_path.read_bytes().count(b"\n") >= 5, 10, "5 lines on the stdout")
    assert d.ctl("stop", "w").returncode == 0
    wait_until(lambda: b"partial" in out_path.read_bytes(), 10, "the partial line")
    lines = out_path.read_bytes().split(b"\n")
    zeros = b"0" * 40000
    assert lines == [b"w:0 | one", b"w:0 | two", b"w:0 | " + zeros[:16384],
                     b"w:0 | " + zeros[16384:32768], b"w:0 | " + zeros[32768:],
                     b"w:0 | partial", b""], [line[:40] for line in lines]
    assert not d.log_dir.exists() or os.listdir(d.log_dir) == []


def test_a_flooding_worker_starves_nobody(daemon_factory: DaemonFactory) -> None:
    """A worker writing at full speed forever (yes) next to one that prints a line every
    0.1 s: the loop still answers, the slow worker's lines still come, and a daemon stdout
    that nobody reads (the pipe is full) blocks nothing: lines are dropped and counted."""
    d = daemon_factory({
        "flood": {"command": "yes", "stdout": "daemon", **QUICK},
        "tick": {"command": ["sh", "-c", "i=0; while :; do echo tick $i; i=$((i+1)); "
                             "sleep 0.1; done"], "stdout": "daemon", **QUICK}})
    proc = _started(d, subprocess.PIPE)
    assert proc.stdout is not None
    ticks: list[bytes] = []
    reading = threading.Event()
    reading.set()

    def read() -> None:
        assert proc.stdout is not None
        while True:
            reading.wait()         # the test stops reading for a while: the pipe fills
            line = proc.stdout.readline()
            if not line:
                return
            if line.startswith(b"tick:0 | ") or line.startswith(b"pyvisor: "):
                ticks.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    wait_until(lambda: sum(x.startswith(b"tick:0") for x in ticks) >= 10, 20,
               "10 ticks through the flood")
    reading.clear()                 # nobody reads: the daemon must not block
    for _ in range(5):
        r = d.ctl("status", "flood", timeout=10)
        assert r.returncode == 0 and "RUNNING" in r.stdout, r
    seen = len(ticks)
    reading.set()
    wait_until(lambda: any(x.startswith(b"pyvisor: ") for x in ticks[seen:]), 20,
               "the count of dropped lines")
    dropped = next(x for x in ticks[seen:] if x.startswith(b"pyvisor: "))
    assert dropped.endswith(b" lines of worker output dropped (the daemon's output was not "
                            b"read fast enough)\n"), dropped
    r = d.ctl("stop", "all", timeout=20)
    assert (r.returncode, r.stdout) == (0, "flood:0: stopped\ntick:0: stopped\n"), r
    assert d.stop() == 0
    t.join(10)


def test_output_to_the_daemon_survives_a_reexec(daemon_factory: DaemonFactory,
                                                tmp_path: Path) -> None:
    d = daemon_factory({"w": {
        "command": ["sh", "-c", "echo before; read x </dev/null; sleep 2; echo after; "
                    "exec sleep 1000"],
        "stdout": "daemon", **QUICK}})
    out_path = tmp_path / "daemon.stdout"
    with open(out_path, "wb") as out:
        _started(d, out)
    wait_until(lambda: b"before" in out_path.read_bytes(), 10, "the first line")
    pid = d.pids()["w:0"]
    assert d.ctl("reexec").returncode == 0
    wait_until(lambda: b"after" in out_path.read_bytes(), 20, "the line written after the "
               "re-exec")
    assert d.pids()["w:0"] == pid
    assert out_path.read_bytes() == b"w:0 | before\nw:0 | after\n"


LIBRARY_WORKER = """
import sys, time
from worker import Worker
with Worker() as w:
    w.ready()
    while not w.should_stop:
        time.sleep(0.05)
    print("finished the unit, stopping", flush=True)
"""


def test_plain_stop_is_graceful_for_a_library_worker(daemon: StartedDaemon,
                                                    tmp_path: Path) -> None:
    script = write_script(tmp_path, "lib.py", LIBRARY_WORKER)
    d = daemon({"g": {"command": [sys.executable, script], **QUICK},
                "s": {"command": [sys.executable, script], "stop_mode": "signal", **QUICK}})
    d.wait_state("g:0", "RUNNING")
    d.wait_state("s:0", "RUNNING")
    r = d.ctl("stop", "g", "s")
    assert (r.returncode, r.stdout, r.stderr) == (0, "g:0: stopped\ns:0: stopped\n", ""), r
    assert _log(d, "g-0.out.log") == "finished the unit, stopping\n"
    assert _log(d, "s-0.out.log") == ""
    assert d.status_of("g:0")["last_exit"] == "exit status 0"
    assert d.status_of("s:0")["last_exit"] == "killed by signal 15"
    # --signal and --graceful choose for one command
    assert d.ctl("start", "g", "s").returncode == 0
    r = d.ctl("restart", "--signal", "g")
    assert (r.returncode, r.stdout) == (0, "g:0: restarted\n"), r
    assert _log(d, "g-0.out.log") == "finished the unit, stopping\n"
    r = d.ctl("stop", "--graceful", "s")
    assert (r.returncode, r.stdout) == (0, "s:0: stopped\n"), r
    assert _log(d, "s-0.out.log") == "finished the unit, stopping\n"


def _pipes_of(pid: int) -> int:
    fds = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):
            count += os.readlink(f"{fds}/{fd}").startswith("pipe:")
    return count


def test_pipes_of_a_crash_loop_and_of_an_escaped_child_are_closed(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """A worker whose child keeps the write end open (setsid, out of the process group) and
    that exits at once, again and again: the daemon closes its read end at every exit, so no
    pipe is left however often it restarts."""
    d = daemon_factory({"w": {
        "command": ["sh", "-c", "setsid sleep 1000 & echo spawned; exit 3"],
        "stdout": "daemon", "start_retries": 3, "backoff": {"initial": 0.05, "max": 0.05},
        **QUICK}})
    with open(tmp_path / "daemon.stdout", "wb") as out:
        proc = _started(d, out)
    d.wait_state("w:0", "FATAL")
    baseline = _pipes_of(proc.pid)
    text = (tmp_path / "daemon.stdout").read_text()
    assert text == "w:0 | spawned\n" * 4, text
    r = d.ctl("start", "w")
    assert r.returncode == 5, r
    d.wait_state("w:0", "FATAL")
    assert _pipes_of(proc.pid) == baseline


def test_a_daemon_stdout_nobody_reads_any_more_breaks_nothing(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """The reader of the daemon's stdout goes away (EPIPE): output is dropped, the daemon and
    its workers carry on."""
    ticks = tmp_path / "ticks"
    d = daemon_factory({"w": {"command": ["sh", "-c", "while :; do echo x; echo x >> "
                                          f"{ticks}; sleep 0.01; done"],
                              "stdout": "daemon", **QUICK}})
    r, w = os.pipe()
    try:
        proc = _started(d, w)
    finally:
        os.close(w)
    assert os.read(r, 100).startswith(b"w:0 | x")
    os.close(r)                                   # nobody reads the daemon's stdout now
    pid = d.pids()["w:0"]
    seen = ticks.read_text().count("x")
    wait_until(lambda: ticks.read_text().count("x") >= seen + 50, 20,
               "50 more lines written through the daemon")
    row = d.status_of("w:0")
    assert (row["state"], row["pid"]) == ("RUNNING", pid), row
    assert proc.poll() is None
    assert d.ctl("stop", "w").returncode == 0
    assert d.stop() == 0
