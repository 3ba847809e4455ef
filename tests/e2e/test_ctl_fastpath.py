"""supervisorctl's fast path (supervisor.ctl.main) against the click CLI (supervisor.ctl.cli).

The entry point runs a few simple argument shapes of status, pid and tail without importing click
and hands everything else to click. Both must behave the same: each argument list below runs
through both, against a real daemon and without one, and stdout, stderr and the exit code
must be equal; each run also says whether click was loaded, so a shape meant for the fast
path that silently fell back to click (or a fallback that did not) fails too.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor import paths
from tests.support.child import read_terminal
from tests.support.daemon import SUPERVISORCTL, DaemonFactory, DaemonProcess, write_script
from tests.support.wait import wait_until

QUICK: dict[str, Any] = {"start_seconds": 0.2, "graceful_timeout": 0.5, "kill_timeout": 0.5}
WORKERS: dict[str, Any] = {
    "run": {"command": "sleep 1000", "numprocs": 2, **QUICK},
    "idle": {"command": "sleep 1000", "autostart": False, **QUICK},
    "done": {"command": "true", "restart": "never", **QUICK},
    "talk": {"command": ["sh", "-c", "for i in $(seq 30); do echo out $i; echo err $i >&2; "
                         "done; exec sleep 1000"], **QUICK},
}
# publishes a status text longer than the table shows, with an escape sequence, and a counter
PUBLISHER = """\
from worker import Worker

with Worker() as w:
    w.status("step 3/5 \\x1b[31mred\\x1b[0m " + "x" * 80)
    w.counter("jobs").inc(42)
    w.ready()
    print("published", flush=True)
    w.wait_for_stop()
"""
# a run of supervisorctl through one path; argv[0] as the installed script's, so that the
# hints it prints ("start it with: .../supervisord") are the same; at exit it writes whether
# click was imported to the file named by $CLICK_SEEN (stdout and stderr stay untouched)
RUNNER = (
    "import atexit, os, sys\n"
    "atexit.register(lambda: open(os.environ['CLICK_SEEN'], 'w')"
    ".write(str('click' in sys.modules)))\n"
    f"sys.argv[0] = {SUPERVISORCTL!r}\n"
    "from supervisor.ctl.{module} import main\n"
    "main()\n"
)
# the figures of a running process that move between two runs a few ms apart
VOLATILE = [
    (re.compile(r"uptime \d+:\d\d:\d\d"), "uptime T"),
    (re.compile(r"cpu \d+\.\d\ds"), "cpu C"),
    (re.compile(r"mem \d+(\.\d)?[KMG]?"), "mem M"),
    (re.compile(r'"(uptime|cpu_seconds|rss|heartbeat_age)": [0-9.e+-]+'), r'"\1": N'),
]


def normal(text: str) -> str:
    for pattern, repl in VOLATILE:
        text = pattern.sub(repl, text)
    return text


def run(module: str, args: list[str], cwd: Path, env: dict[str, str], stdout: Any = None
        ) -> tuple[int, str, str, bool]:
    seen = cwd / f".click-seen-{module}"
    seen.unlink(missing_ok=True)
    p = subprocess.run(
        [sys.executable, "-c", RUNNER.format(module=module), *args],
        stdin=subprocess.DEVNULL, stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=cwd, env={**env, "CLICK_SEEN": str(seen)}, timeout=60,
        check=False)
    out = p.stdout.decode(errors="surrogateescape") if p.stdout is not None else ""
    return (p.returncode, out, p.stderr.decode(errors="surrogateescape"),
            seen.read_text() == "True")


def compare(args: list[str], cwd: Path, env: dict[str, str], fast: bool) -> tuple[int, str, str]:
    """Run args through both paths; assert they agree and that the fast path took the fast
    route exactly when ``fast``. Returns (exit code, stdout, stderr)."""
    rc1, out1, err1, click1 = run("main", args, cwd, env)
    rc2, out2, err2, click2 = run("cli", args, cwd, env)
    assert click2, "the click path did not load click"
    assert click1 == (not fast), (args, "loaded click" if click1 else "did not load click")
    assert (rc1, normal(out1), normal(err1)) == (rc2, normal(out2), normal(err2)), args
    return rc1, out1, err1


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != paths.ENV_CONFIG and not k.startswith("_SUPERVISORCTL")}
    env.pop("NO_COLOR", None)
    env["TERM"] = "xterm"
    return env


@pytest.fixture
def started(daemon_factory: DaemonFactory, tmp_path: Path) -> DaemonProcess:
    # named like the default config, so that a plain `supervisorctl status` in its directory
    # finds it as ./supervisord.yaml
    script = write_script(tmp_path, "pub.py", PUBLISHER)
    workers = {**WORKERS, "pub": {"command": [sys.executable, script], "graceful_timeout": 5}}
    d = daemon_factory(workers, name="supervisord.yaml").start()
    d.wait_state("run:1", "RUNNING")
    d.wait_state("pub:0", "RUNNING")
    out = d.log_dir / "pub-0.out.log"
    wait_until(lambda: "published" in out.read_text(), 10, "the worker published")
    err = d.log_dir / "talk-0.err.log"
    wait_until(lambda: err.exists() and "err 30" in err.read_text(), 10, "talk wrote its lines")
    d.wait_state("done:0", "EXITED")
    return d


def fast_cases(c: str) -> list[list[str]]:
    return [
        ["-c", c, "status"], ["--config", c, "status"], [f"--config={c}", "status"],
        ["status"], ["status", "--json"], ["-c", c, "status", "--json"],
        ["-c", c, "status", "idle", "done:0"], ["-c", c, "status", "--json", "run:1", "idle"],
        ["-c", c, "status", "idle", "-v"], ["-c", c, "status", "--verbose", "done"],
        ["-c", c, "status", "pub"], ["-c", c, "status", "-v", "pub"],
        ["-c", c, "status", "pub", "--verbose"], ["-c", c, "status", "--json", "pub"],
        ["-c", c, "status", "-v", "--json", "idle", "--json"], ["-c", c, "status", "all"],
        ["-c", c, "status", "nosuch"], ["-c", c, "status", "run:7"],
        ["-c", c, "status", "--json", "nosuch"],
        ["-c", c, "pid"], ["-c", c, "pid", "run"], ["-c", c, "pid", "run:0", "idle"],
        ["-c", c, "pid", "all"], ["-c", c, "pid", "nosuch"], ["pid", "done"],
        ["-c", c, "tail", "talk"], ["-c", c, "tail", "talk:0", "--stdout"],
        ["-c", c, "tail", "--stderr", "talk", "-n", "3"], ["-c", c, "tail", "talk", "--lines", "0"],
        ["-c", c, "tail", "talk", "--lines=5"], ["-c", c, "tail", "talk", "-n", "007"],
        ["-c", c, "tail", "nosuch"], ["-c", c, "tail", "run"], ["-c", c, "tail", "run:0"],
        ["tail", "pub", "-n", "100"],
    ]


def click_cases(c: str) -> list[list[str]]:
    return [
        ["-c", c, "status", "a name"], ["-c", c, "pid", "run:0 x"], ["-c", c, "status", "-x"],
        ["-c", c, "status", "--", "idle"], ["-c", c, "status", "--help"], ["-c", c, "pid", "-h"],
        ["-c", c, "status", "--json=1"], ["-c", c, "--timeout", "5", "status"],
        ["-c", c, "-c", c, "status"], ["-c", "", "status"], ["--config=", "pid"],
        ["-c"], ["-c", c], ["-c", c, "statuss"], ["-c", c, "update"], ["--version"], [],
        [f"-c{c}", "status"], ["-c", c, "status", "-vv"], ["-c", c, "status", "x" * 65],
        ["-c", c, "tail"], ["-c", c, "tail", "talk", "--stdout", "--stderr"],
        ["-c", c, "tail", "talk", "-n", "-1"], ["-c", c, "tail", "talk", "-n5"],
        ["-c", c, "tail", "talk", "-n", "x"], ["-c", c, "tail", "talk", "run:0"],
        ["-c", c, "tail", "talk", "-n", "1", "-n", "2"], ["-c", c, "tail", "talk", "-n"],
        ["-c", c, "tail", "talk", "-n", "1" * 19], ["-c", c, "tail", "talk", "--json"],
    ]


def test_both_paths_agree_with_a_daemon(started: DaemonProcess) -> None:
    c, env = str(started.config_path), base_env()
    for args in fast_cases(c):
        compare(args, started.dir, env, fast=True)
    for args in click_cases(c):
        compare(args, started.dir, env, fast=False)
    # the config from the environment, as click's envvar: set and not empty
    compare(["status", "idle"], started.dir.parent, {**env, paths.ENV_CONFIG: c}, fast=True)
    compare(["pid"], started.dir.parent, {**env, paths.ENV_CONFIG: c}, fast=True)
    # shell completion is click's
    compare(["status"], started.dir, {**env, "_SUPERVISORCTL_COMPLETE": "bash_source"},
            fast=False)
    # the outputs are what the verbs print (not two equal failures)
    rc, out, err = compare(["-c", c, "pid", "run:0"], started.dir, env, fast=True)
    assert (rc, out, err) == (0, f"{started.pids()['run:0']}\n", "")
    rc, out, err = compare(["-c", c, "status", "idle"], started.dir, env, fast=True)
    assert (rc, err) == (0, "") and out.startswith("idle:0  STOPPED"), (rc, out, err)
    rc, out, err = compare(["-c", c, "status", "--verbose", "pub"], started.dir, env, fast=True)
    assert rc == 0 and "    jobs (counter) = 42" in out, (rc, out, err)
    rc, out, err = compare(["-c", c, "tail", "talk", "-n", "2"], started.dir, env, fast=True)
    assert rc == 0 and "out 30\n" in out and "err 30\n" in out and "out 28" not in out, out
    rc, out, err = compare(["-c", c, "status", "nosuch"], started.dir, env, fast=True)
    assert rc == 4 and out == "" and "no such worker: nosuch" in err, (rc, out, err)


def test_both_paths_agree_without_a_daemon(started: DaemonProcess, tmp_path: Path) -> None:
    c, env = str(started.config_path), base_env()
    started.stop()
    wait_until(lambda: not started.socket.exists(), 15, "the socket to go")
    (tmp_path / "adir").mkdir(exist_ok=True)
    for args in (["-c", c, "status"], ["-c", c, "status", "--json", "run"], ["-c", c, "pid"],
                 ["-c", str(tmp_path / "missing.yaml"), "status"],
                 ["-c", str(tmp_path / "missing.yaml"), "pid", "run:0"],
                 ["-c", str(tmp_path / "adir"), "status"], ["status"]):
        rc, out, err = compare(args, started.dir, env, fast=True)
        assert rc == 3 and out == "" and err.startswith("supervisorctl: "), (args, rc, err)
    # a path that is not ASCII, with streams set to ASCII: click writes UTF-8 (replacing what
    # cannot be encoded) where Python's own stderr would write backslash escapes
    odd = str(tmp_path / "caf\u00e9-\U0001f600.yaml")
    for extra in ({}, {"PYTHONIOENCODING": "ascii"}, {"PYTHONIOENCODING": "latin-1"}):
        rc, out, err = compare(["-c", odd, "status"], started.dir, {**env, **extra}, fast=True)
        assert rc == 3 and "caf" in err, (extra, err)
    # tail reads the files the config names when no daemon runs
    for args in (["-c", c, "tail", "talk", "-n", "4"], ["-c", c, "tail", "nosuch"],
                 ["-c", str(tmp_path / "missing.yaml"), "tail", "talk"]):
        compare(args, started.dir, env, fast=True)
    # (without -c, $PYVISOR_CONFIG and ./supervisord.yaml the CLI would pick the one daemon
    # of this user that runs: on a shared machine that is someone else's, so not run here)


def test_both_paths_agree_on_a_terminal_and_a_closed_pipe(started: DaemonProcess) -> None:
    c, env = str(started.config_path), base_env()
    for args in (["-c", c, "status"], ["-c", c, "status", "idle", "done"],
                 ["-c", c, "status", "-v", "pub"], ["-c", c, "tail", "talk"],
                 ["-c", c, "status", "--json", "idle"], ["-c", c, "pid", "run"]):
        outs = []
        for module in ("main", "cli"):
            master, slave = pty.openpty()
            try:
                rc, _o, err, _click = run(module, args, started.dir, env, stdout=slave)
                os.close(slave)
                slave = -1
                shown = read_terminal(master)
            finally:
                os.close(master)
                if slave >= 0:
                    os.close(slave)
            outs.append((rc, normal(shown.decode()), normal(err)))
        assert outs[0] == outs[1], args
        assert outs[0][0] == 0, outs[0]
    # stdout a pipe nobody reads any more (`| head` that has exited): exit 1, no traceback
    for args in (["-c", c, "status"], ["-c", c, "pid", "run"]):
        results = []
        for module in ("main", "cli"):
            r, w = os.pipe()
            os.close(r)
            try:
                results.append(run(module, args, started.dir, env, stdout=w)[:3])
            finally:
                os.close(w)
        assert results[0] == results[1] == (1, "", ""), (args, results)


def test_the_text_status_reply_is_the_table_alone(started: DaemonProcess) -> None:
    """The text status carries its rows as text only ("data" null, the names are in the
    table); --json carries every row as data, with the same names in the same order."""
    import socket

    from supervisor.control.wire import Reply, decode_reply, encode_request, request_doc

    def ask(opts: dict[str, Any]) -> Reply:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10.0)
            s.connect(str(started.socket))
            s.sendall(encode_request(request_doc("status", ["all"], opts)))
            raw = bytearray()
            while chunk := s.recv(1 << 20):
                raw += chunk
        assert raw.endswith(b"\n") and raw.count(b"\n") == 1, raw[:200]
        return decode_reply(bytes(raw[:-1]))

    text, rows = ask({}), ask({"json": True})
    assert (text.code, text.err, text.data) == (0, "", None), text
    assert rows.code == 0 and rows.out == "" and isinstance(rows.data, list), rows
    names = [r["name"] for r in rows.data]
    assert names and [ln.split()[0] for ln in text.out.splitlines()] == names, (text, names)
    assert all(len(r) == 22 for r in rows.data), rows.data[0]
