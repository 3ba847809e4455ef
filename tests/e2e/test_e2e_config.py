"""Config errors at start-up, one daemon per config, the control socket's mode and a silent
client."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import SUPERVISORD, StartedDaemon, ctl_hint

SIGNALS = ("HUP, INT, QUIT, ILL, TRAP, ABRT, BUS, FPE, KILL, USR1, SEGV, USR2, PIPE, ALRM, TERM, "
           "STKFLT, CHLD, CONT, STOP, TSTP, TTIN, TTOU, URG, XCPU, XFSZ, VTALRM, PROF, WINCH, IO, "
           "PWR, SYS, RTMIN, RTMAX")

BAD_CONFIGS = {
    "typo": ("workers:\n  w:\n    comand: sleep 1\n",
             "bad.yaml:3: workers.w.comand: unknown key; did you mean 'command'?"),
    "wrong_type": ("workers:\n  w:\n    command: sleep 1\n    numprocs: two\n",
                   "bad.yaml:4: workers.w.numprocs: must be an integer (got 'two')"),
    "wrong_type_seconds": ("workers:\n  w:\n    command: sleep 1\n    start_seconds: fast\n",
                           "bad.yaml:4: workers.w.start_seconds: must be a number (got 'fast')"),
    "missing_command": ("workers:\n  w:\n    numprocs: 1\n",
                        "bad.yaml:2: workers.w: missing required key 'command'"),
    "duplicate_name": ("workers:\n  w:\n    command: sleep 1\n  w:\n    command: sleep 2\n",
                       "bad.yaml:4: workers.w: duplicate key; first defined on line 2"),
    "bad_signal": ("workers:\n  w:\n    command: sleep 1\n    stop_signal: SIGFOO\n",
                   (f"bad.yaml:4: workers.w.stop_signal: unknown signal 'SIGFOO'; use one of "
                   f"{SIGNALS} (with or without SIG) or a number from 1 to 64")),
    "supervisor_typo": ("supervisor:\n  sockett: x.sock\nworkers:\n  w:\n    command: sleep 1\n",
                        "bad.yaml:2: supervisor.sockett: unknown key; did you mean 'socket'?"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exit_2_exact_message(tmp_path: Path, case: str) -> None:
    text, message = BAD_CONFIGS[case]
    (tmp_path / "bad.yaml").write_text(text)
    r = subprocess.run([SUPERVISORD, "-c", "bad.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", message + "\n"), r
    assert "Traceback" not in r.stderr


def test_one_daemon_per_config(daemon: StartedDaemon) -> None:
    d = daemon({"w": {"command": "sleep 1000", "start_seconds": 0.2, "kill_timeout": 0.5}})
    pids = d.pids()
    r = subprocess.run([SUPERVISORD, "-c", str(d.config_path)], capture_output=True, text=True,
                       timeout=30, check=False, stdin=subprocess.DEVNULL)
    cfg = d.config_path
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", (f"supervisord: another supervisord (pid {d.pid}) is already running {cfg} "
                f"(lock {d.socket}.lock); stop it first: {ctl_hint(cfg)} shutdown\n")), r
    assert d.pids() == pids, "the second daemon touched the first one's workers"
    assert d.ctl("pid").stdout == f"{d.pid}\n"


def test_socket_mode_0600(daemon: StartedDaemon) -> None:
    d = daemon({"w": {"command": "sleep 1000", "start_seconds": 0.2, "kill_timeout": 0.5}})
    st = os.stat(d.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)


def test_silent_clients_do_not_stall_status(daemon: StartedDaemon) -> None:
    d = daemon({"w": {"command": "sleep 1000", "start_seconds": 0.2, "kill_timeout": 0.5}})
    d.wait_state("w:0", "RUNNING")
    silent = []
    try:
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.socket))
            silent.append(s)
            half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)   # half a request
            half.connect(str(d.socket))
            half.sendall(b'{"cmd": "sta')
            silent.append(half)
        t0 = time.monotonic()
        r = d.ctl("status", timeout=30)
        took = time.monotonic() - t0
        assert r.returncode == 0 and r.stdout.startswith("w:0  RUNNING"), r
        assert took < 5, f"status took {took:.2f} s with silent clients connected"
    finally:
        for s in silent:
            s.close()
