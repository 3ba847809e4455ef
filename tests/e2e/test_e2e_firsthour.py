"""The operator's first hour (issue 15): a crashed worker's output is easy to find, and every
hint the daemon prints works when pasted."""

from __future__ import annotations

import contextlib
import os
import pty
import pwd
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import BIN_DIR, SUPERVISORD, StartedDaemon, ctl_hint, write_script
from tests.support.wait import wait_until

QUICK: dict[str, Any] = {"start_seconds": 0.2, "graceful_timeout": 0.5, "kill_timeout": 0.5}


def test_a_crashed_workers_output_is_named_and_its_hint_pastes(daemon: StartedDaemon,
                                                               tmp_path: Path) -> None:
    d = daemon({"crasher": {**QUICK, "command": ["sh", "-c", "echo starting; "
                                                 "echo 'error: no such table: users' >&2; exit 1"],
                            "start_retries": 1, "backoff": {"initial": 0.05, "max": 0.05}}})
    d.wait_state("crasher:0", "FATAL")
    out, err = d.log_dir / "crasher-0.out.log", d.log_dir / "crasher-0.err.log"
    ctl = ctl_hint(d.config_path)
    log = [re.sub(r"^\S+ \S+ \S+ +", "", line) for line in d.log_text().splitlines()
           if "crasher:0" in line and "spawned pid" not in line]
    assert [re.sub(r"\d+\.\d\d s", "T s", line) for line in log] == [
        "crasher:0 STOPPED -> STARTING (start requested)",
        "crasher:0 STARTING -> BACKOFF (exited: exit status 1; retry 1 of 1 in T s)",
        f"crasher:0 output in {out} and {err}; its last line: 'error: no such table: users'; "
        f"see it: {ctl} tail crasher:0",
        "crasher:0 BACKOFF -> STARTING (backoff T s over; retry 1 of 1)",
        "crasher:0 STARTING -> FATAL (exited: exit status 1; 2 failed starts)",
        f"crasher:0 exited 2 times within T s; giving up (FATAL). Fix it, then: {ctl} start "
        "crasher",
        f"crasher:0 output in {out} and {err}; its last line: 'error: no such table: users'; "
        f"see it: {ctl} tail crasher:0"], log

    r = d.ctl("status", "crasher")
    assert r.returncode == 0 and re.sub(r"\d+\.\d\d s", "T s", r.stdout) == (
        "crasher:0  FATAL     exited 2 times within T s; giving up (FATAL). Fix it, then: "
        f"{ctl} start crasher; its last line: 'error: no such table: users' (in {err})\n"), r

    # both hints work as pasted, from another directory, with only the venv on PATH
    env = {"PATH": f"{BIN_DIR}:/usr/bin:/bin"}
    tail = subprocess.run(f"{ctl} tail crasher:0", shell=True, cwd="/", env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (tail.returncode, tail.stdout, tail.stderr) == (0, (
        f"==> {out} <==\nstarting\nstarting\n\n==> {err} <==\n"
        "error: no such table: users\nerror: no such table: users\n"), ""), tail
    start = subprocess.run(f"{ctl} start crasher", shell=True, cwd="/", env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert start.returncode == 5 and start.stderr.startswith("crasher:0: ERROR (FATAL)"), start
    assert shlex.split(ctl)[-1] == str(d.config_path)


def _check(config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """supervisord --check of config, with a plain PATH."""
    return subprocess.run([f"{BIN_DIR}/supervisord", "-c", str(config), "--check"],
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_check_warns_of_a_program_its_user_cannot_run() -> None:
    """As root, os.access says yes to everything: a program under a directory of mode 0700
    (a venv's python is a link into /root/.pyenv) passed --check, and every spawn of a
    ``user:`` worker then failed with 'permission denied'."""
    if os.geteuid() != 0:
        pytest.skip("only root runs workers as another user")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody here")
    with tempfile.TemporaryDirectory(dir="/tmp") as top:    # (pytest's tmp_path is 0700)
        base = Path(top)
        base.chmod(0o755)
        private = base / "private"
        private.mkdir(mode=0o700)
        (private / "tool").write_text("#!/bin/sh\n")
        (private / "tool").chmod(0o755)
        (base / "link").symlink_to(private / "tool")
        config = base / "app.yaml"
        config.write_text(f"""workers:
  a: {{command: [{private}/tool], user: nobody}}
  b: {{command: [{base}/link], user: nobody}}
  c: {{command: [{private}/tool]}}
  d: {{command: [sleep, '1'], user: nobody}}
""")
        r = _check(config)
    why = f"{private} is mode 0700, owned by 0:0"
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{config}: OK (4 workers, 2 warnings)\n", (
        f"{config}: workers.a.command: warning: '{private}/tool': user 'nobody' cannot run it "
        f"({why})\n"
        f"{config}: workers.b.command: warning: '{base}/link': user 'nobody' cannot run it "
        f"({why})\n")), r


def test_check_warns_of_a_program_that_is_not_there(tmp_path: Path) -> None:
    (tmp_path / "there.sh").write_text("#!/bin/sh\n")
    (tmp_path / "there.sh").chmod(0o755)
    (tmp_path / "plain.txt").write_text("")
    config = tmp_path / "app.yaml"
    config.write_text("""workers:
  a: {command: [no-such-binary]}
  b: {command: ./nope.sh}
  c: {command: sleep 1, environment: {PATH: /nowhere}}
  d: {command: [python3, -m, worker]}
  e: {command: ./there.sh}
  f: {command: ./plain.txt}
  g: {command: "no-such-{name}", numprocs: 2}
""")
    r = _check(config)
    path = f"{BIN_DIR}:/usr/bin:/bin"
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{config}: OK (7 workers, 5 warnings)\n", (
        f"{config}: workers.a.command: warning: 'no-such-binary' is not found in the worker's "
        f"PATH ({path})\n"
        f"{config}: workers.b.command: warning: './nope.sh': no such file ({tmp_path}/nope.sh)\n"
        f"{config}: workers.c.command: warning: 'sleep' is not found in the worker's PATH "
        "(/nowhere)\n"
        f"{config}: workers.f.command: warning: './plain.txt': not an executable file "
        f"({tmp_path}/plain.txt)\n"
        f"{config}: workers.g.command: warning: 'no-such-g' is not found in the worker's PATH "
        f"({path})\n")), r


def test_check_warns_of_output_files_a_spawn_would_refuse(tmp_path: Path) -> None:
    """A log path that is a directory, a FIFO, a symbolic link or a hard-linked file:
    --check says so (the field, the path, why), in the words the spawn would use, and makes
    nothing; past 20 such files, one line for the rest."""
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo", 0o600)
    (tmp_path / "target").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "twice").write_text("")
    os.link(tmp_path / "twice", tmp_path / "twice2")
    for i in range(20):
        (tmp_path / f"d{i}").mkdir()
    config = tmp_path / "app.yaml"
    many = "".join(f"  m{i}: {{command: [sleep, '1'], stdout: {{path: d{i}}}}}\n"
                   for i in range(20))
    config.write_text(f"""workers:
  b: {{command: [sleep, '1'], stdout: {{path: adir}}, stderr: {{path: fifo}}}}
  c: {{command: [sleep, '1'], stdout: {{path: link}}, stderr: {{path: twice}}}}
  d: {{command: [sleep, '1'], stdout: {{path: 'ok-{{index}}.log'}}}}
{many}""")
    before = sorted(os.listdir(tmp_path))
    r = _check(config, timeout=120)
    t = tmp_path
    ok = f"{config}: OK (23 workers, 21 warnings)\n"
    assert (r.returncode, r.stdout) == (0, ok), r
    assert r.stderr.splitlines()[:4] == [
        f"{config}: workers.b.stdout.path: warning: a spawn would refuse {t}/adir: is a "
        "directory, not a file",
        f"{config}: workers.b.stderr.path: warning: a spawn would refuse {t}/fifo: is not a "
        "regular file (a FIFO, device or socket); refusing to use it",
        f"{config}: workers.c.stdout.path: warning: a spawn would refuse {t}/link: is a "
        "symbolic link; refusing to follow it",
        f"{config}: workers.c.stderr.path: warning: a spawn would refuse {t}/twice: has 2 hard "
        "links; refusing to write to a file that is also elsewhere"], r
    assert r.stderr.splitlines()[4:] == [
        f"{config}: workers.m{i}.stdout.path: warning: a spawn would refuse {t}/d{i}: is a "
        "directory, not a file" for i in range(16)] + [
        f"{config}: ... and 4 more output files like these"], r
    assert sorted(os.listdir(tmp_path)) == before

def _on_a_tty(d: Any, *args: str) -> str:
    """supervisorctl ARGS with its stdout on a pseudo-terminal; what it printed there."""
    main, sub = pty.openpty()
    try:
        proc = subprocess.run([f"{BIN_DIR}/supervisorctl", "-c", str(d.config_path), *args],
                              stdout=sub, stderr=subprocess.PIPE, timeout=60, check=False,
                              env={**os.environ, "TERM": "xterm", "NO_COLOR": ""})
        os.close(sub)
        sub = -1
        out = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:         # EIO: the other side is closed and all is read
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(main)
        if sub >= 0:
            os.close(sub)
    assert proc.returncode == 0, proc
    return out.decode().replace("\r\n", "\n")


def test_status_header_colours_restarts_backoff_and_pid_all(daemon: StartedDaemon) -> None:
    d = daemon({
        "up": {**QUICK, "command": "sleep 1000"},
        "flappy": {**QUICK, "command": ["sh", "-c", "sleep 0.3; exit 1"], "restart": "always",
                   "crash_interval": 0.1},
        "failing": {**QUICK, "command": ["sh", "-c", "exit 2"],
                    "backoff": {"initial": 60, "max": 60}}})
    d.wait_state("up:0", "RUNNING")
    wait_until(lambda: d.status_of("flappy:0"), 20, "flappy to restart twice",
               ok=lambda row: row["restarts"] >= 2 and row["state"] == "RUNNING")
    d.wait_state("failing:0", "BACKOFF")

    # in a pipe: no header, no colours; the restarts count and the BACKOFF reason
    r = d.ctl("status", "failing", "up")
    assert r.returncode == 0 and re.fullmatch(
        r"failing:0  BACKOFF   last: exit status 2; retry 1 of 5 in \d+\.\d s\n"
        r"up:0       RUNNING   pid \d+, uptime 0:00:\d\d, hb -, work -, cpu \d+\.\d\ds, "
        r"mem \d+(\.\d)?[KMG]\n", r.stdout), r.stdout
    r = d.ctl("status", "flappy")
    assert re.search(r"[,;] restarts \d+\n$", r.stdout), r.stdout
    assert d.ctl("stop", "flappy").returncode == 0

    # on a terminal: a header, and the state in colour
    out = _on_a_tty(d, "status", "failing", "up")
    assert re.fullmatch(
        r"NAME       STATE     DETAILS\n"
        r"failing:0  \x1b\[1;31mBACKOFF \x1b\[0m  last: exit status 2; retry 1 of 5 in \d+\.\d s\n"
        r"up:0       \x1b\[32mRUNNING \x1b\[0m  pid \d+, .*\n", out), out
    assert "\x1b" not in d.ctl("status").stdout
    assert "\x1b" not in _on_a_tty(d, "status", "--json")

    # pid all names each pid
    pids = d.pids()
    r = d.ctl("pid", "all")
    assert (r.returncode, r.stdout, r.stderr) == (5, "", (
        f"failing:0: not running\nflappy:0: not running\nup:0 {pids['up:0']}\n")), r

    # the count survives a SIGKILL of the daemon (the intent record)
    before = d.status_of("flappy:0")["restarts"]
    assert before >= 2
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    d.start()
    assert d.status_of("flappy:0")["restarts"] == before


STUBBORN = """
import signal, time
from worker import Worker
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with Worker() as w:
    w.ready()
    while True:          # never looks at should_stop: a unit of work that takes for ever
        time.sleep(0.05)
"""


def test_ctrl_c_again_says_what_it_waits_for_and_once_more_hurries(daemon: StartedDaemon,
                                                                    tmp_path: Path) -> None:
    script = write_script(tmp_path, "stubborn.py", STUBBORN)
    d = daemon({"w": {"command": [sys.executable, script], "graceful_timeout": 60,
                      "kill_timeout": 60}})
    d.wait_state("w:0", "RUNNING")

    def lines(after: int) -> list[str]:
        return [re.sub(r"^\S+ \S+ \S+ +", "", line)
                for line in d.log_text()[after:].splitlines()]

    mark = d.log_mark()
    d.kill(signal.SIGINT)
    d.wait_log(r"w:0 RUNNING -> STOPPING", after=mark)
    mark = d.log_mark()
    d.kill(signal.SIGINT)
    d.wait_log(r"SIGINT again: still stopping", after=mark)
    got = [re.sub(r"\d+\.\d s more", "N s more", line) for line in lines(mark)]
    assert got == ["SIGINT again: still stopping, waiting for w:0 (graceful stop, up to N s "
                   "more, then SIGTERM); send it once more to hurry (stop_signal now, then "
                   "SIGKILL)"], got
    mark = d.log_mark()
    d.kill(signal.SIGINT)
    d.wait_log(r"sending signal 15 now", after=mark)
    assert lines(mark) == ["SIGINT again: hurrying the stop of w:0",
                           "w:0 stop hurried; sending signal 15 now"]
    mark = d.log_mark()
    d.kill(signal.SIGTERM)          # it ignores SIGTERM: the next step is SIGKILL
    assert d.proc is not None
    assert d.proc.wait(20) == 0
    got = lines(mark)
    assert got[:3] == ["SIGTERM again: hurrying the stop of w:0",
                       "w:0 stop hurried; sending signal 9 now",
                       "w:0 STOPPING -> STOPPED (exited: killed by signal 9)"], got


def test_a_starting_daemon_removes_stale_locks(daemon_factory: Any) -> None:
    import uuid

    from supervisor import paths
    d = daemon_factory({"w": {**QUICK, "command": "sleep 1000"}})
    stale = Path(paths.runtime_dir(), f"prefix-tstale{uuid.uuid4().hex[:8]}.lock")
    stale.parent.mkdir(mode=0o700, exist_ok=True)
    stale.write_text("4242 /gone.yaml\n")
    try:
        d.start()
        assert not stale.exists()
        d.wait_log(rf"removed stale files of daemons that are gone from "
                   rf"{re.escape(paths.runtime_dir())}: .*{re.escape(stale.name)}")
        lock = Path(paths.runtime_dir(), f"prefix-{d.prefix}.lock")
        assert lock.exists(), "the daemon's own lock is held and kept"
    finally:
        stale.unlink(missing_ok=True)


def test_with_the_daemon_down_status_names_live_workers_and_tail_reads_the_logs(
        daemon: StartedDaemon) -> None:
    d = daemon({"w": {**QUICK, "numprocs": 2,
                      "command": ["sh", "-c", "echo up; echo warn >&2; exec sleep 1000"]}})
    d.wait_state("w:1", "RUNNING")
    pids = d.pids()
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    cfg = d.config_path
    r = d.ctl("status")
    assert (r.returncode, r.stdout, r.stderr) == (3, "", (
        f"supervisorctl: no supervisord is running for {cfg} (start it with: {SUPERVISORD} -c "
        f"{cfg})\nsupervisorctl: 2 workers are still alive and will be adopted when it starts: "
        f"w:0 (pid {pids['w:0']}), w:1 (pid {pids['w:1']})\n")), r
    out, err = d.log_dir / "w-0.out.log", d.log_dir / "w-0.err.log"
    r = d.ctl("tail", "w:0")
    assert (r.returncode, r.stdout, r.stderr) == (0, (
        f"==> {out} <==\nup\n\n==> {err} <==\nwarn\n"), (
        f"supervisorctl: supervisord is not running; reading w:0's log files as {cfg} names "
        "them\n")), r
    r = d.ctl("tail", "w:5")
    assert (r.returncode, r.stderr) == (3, (
        f"supervisorctl: no supervisord is running for {cfg} (start it with: {SUPERVISORD} -c "
        f"{cfg})\nsupervisorctl: {cfg} has no instance w:5\n")), r
    d.start()                          # adopts them again (and the fixture stops them)
    assert d.pids() == pids
    d.stop()
    r = d.ctl("status")
    assert (r.returncode, r.stderr) == (3, (
        f"supervisorctl: no supervisord is running for {cfg} (start it with: {SUPERVISORD} -c "
        f"{cfg})\n")), r


def test_logs_interleaves_instances_with_a_prefix(daemon: StartedDaemon, tmp_path: Path) -> None:
    flag = tmp_path / "more"
    d = daemon({
        "web": {**QUICK, "numprocs": 2, "command": [
            "sh", "-c", "echo web {index} up; echo oops {index} >&2; "
            f"while [ ! -e {flag} ]; do sleep 0.05; done; echo web {{index}} more; "
            "exec sleep 1000"]},
        "db": {**QUICK, "command": ["sh", "-c", "echo db up; printf %020000d 0; echo; "
                                    "exec sleep 1000"], "stderr": "stdout"}})
    for inst in ("web:0", "web:1", "db:0"):
        d.wait_state(inst, "RUNNING")
    wait_until(lambda: (d.log_dir / "db-0.out.log").stat().st_size > 20000, 10, "db's output")
    r = d.ctl("logs")
    zeros = "0" * 20000
    assert (r.returncode, r.stderr) == (0, ""), r
    assert r.stdout == (
        "db:0  | db up\n" f"db:0  | {zeros[:16384]}\n" f"db:0  | {zeros[16384:]}\n"
        "web:0 | web 0 up\n" "web:0 ! oops 0\n" "web:1 | web 1 up\n" "web:1 ! oops 1\n"), r
    r = d.ctl("logs", "-n", "1", "web:1")
    assert (r.returncode, r.stdout) == (0, "web:1 | web 1 up\nweb:1 ! oops 1\n"), r

    follower = subprocess.Popen([f"{BIN_DIR}/supervisorctl", "-c", str(d.config_path), "logs",
                                 "-f", "-n", "1", "web"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        assert follower.stdout is not None
        os.set_blocking(follower.stdout.fileno(), False)
        seen = [b""]

        def got() -> bytes:
            assert follower.stdout is not None
            with contextlib.suppress(BlockingIOError):
                seen[0] += os.read(follower.stdout.fileno(), 65536)
            return seen[0]

        first = b"web:0 | web 0 up\nweb:0 ! oops 0\nweb:1 | web 1 up\nweb:1 ! oops 1\n"
        wait_until(got, 10, "the last line of each log", ok=lambda b: b == first)
        flag.touch()                        # now the new lines, as they come
        wait_until(got, 10, "both instances' new lines",
                   ok=lambda b: sorted(b[len(first):].splitlines()) == [
                       b"web:0 | web 0 more", b"web:1 | web 1 more"])
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)


def test_logs_of_more_instances_than_it_follows(daemon: StartedDaemon) -> None:
    d = daemon({"many": {"command": "sleep 1000", "numprocs": 129, "autostart": False}})
    r = d.ctl("logs")
    assert (r.returncode, r.stdout, r.stderr) == (
        0, "", "supervisorctl: showing the first 256 of 258 logs; name fewer targets\n"), r
