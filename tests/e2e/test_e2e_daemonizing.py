"""A program that daemonizes itself exits 0 at once and escapes (issue 15, item 13): the
daemon says so, with the program's usual foreground flag. Real nginx and redis-server."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_adopt_servers import NGINX, REDIS, free_port, in_dir, need
from tests.support.daemon import DaemonFactory
from tests.support.wait import wait_until


def nginx_daemonizing(tmp: Path) -> dict[str, Any]:
    port = free_port()
    (tmp / "nginx.conf").write_text(f"""master_process on; worker_processes 1;
pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {tmp}/body;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }} }}
""")
    return {"command": [need(NGINX, "nginx"), "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
            "directory": str(tmp)}


def redis_daemonizing(tmp: Path) -> dict[str, Any]:
    return {"command": [need(REDIS, "redis-server"), "--port", str(free_port()), "--bind",
                        "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "yes",
                        "--pidfile", str(tmp / "redis.pid")],
            "directory": str(tmp)}


@pytest.mark.parametrize(("server", "flag"), [
    ("nginx", "-g 'daemon off;' (or daemon off; in nginx.conf)"),
    ("redis-server", "--daemonize no")])
@pytest.mark.parametrize("cgroups", [True, False])
def test_a_daemonizing_server_is_named_with_its_flag(daemon_factory: DaemonFactory,
                                                     tmp_path: Path, server: str, flag: str,
                                                     cgroups: bool) -> None:
    where = tmp_path / "srv"
    where.mkdir()
    make = nginx_daemonizing if server == "nginx" else redis_daemonizing
    d = daemon_factory({"srv": {**make(where), "start_seconds": 2, "start_retries": 0,
                                "kill_timeout": 2}}, supervisor={"cgroups": cgroups})
    d.start()
    try:
        row = wait_until(lambda: d.status_of("srv:0"), 30, "the note of srv:0",
                         ok=lambda row: bool(row["note"]))
        assert row["state"] == "EXITED" and row["last_exit"] == "exit status 0", row
        note = row["note"]
        if cgroups:      # the cgroup saw the leftovers, and they were killed
            assert re.fullmatch(
                r"exited 0 after \d+\.\d\d s and left \d+ \(\S+\)( and \d+ more|, .*)? behind: "
                r"it daemonized itself, and the supervisor cannot watch it\. Programs must "
                rf"run in the foreground; for {re.escape(server)}: {re.escape(flag)}",
                note), note
            wait_until(lambda: in_dir(where) == [], 10, "the escaped server to be killed")
        else:   # still in the process group (killed with it), or setsid() took it out
            assert re.fullmatch(       # of the group and it is known by its name
                r"(exited 0 after \d+\.\d\d s and left processes in its process group \d+ "
                r"behind: it daemonized itself, and the supervisor cannot watch it"
                rf"|{re.escape(server)} exited 0 after \d+\.\d\d s: it probably daemonized "
                r"itself \(a server that left its process group is out of the supervisor's "
                r"sight\))\. Programs must run in the foreground; for "
                rf"{re.escape(server)}: {re.escape(flag)}", note), note
        r = d.ctl("status", "srv")
        assert r.returncode == 0 and r.stdout.endswith(f". {note}\n"), r
        d.wait_log(r"ERROR +srv:0 (exited 0 after|\S+ exited 0 after).*daemonized itself")
    finally:
        if not cgroups:    # the escaped server is this test's to end (by pid, from its dir)
            import os
            import signal
            for pid in in_dir(where):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: in_dir(where) == [], 10, "the escaped server to die")


def test_a_one_shot_program_is_not_called_a_daemon() -> None:
    from supervisor.runtime.foreground import daemonized_hint
    assert daemonized_hint(["/bin/true"], 0.01, None) is None
    assert daemonized_hint(["/usr/sbin/php-fpm8.2"], 0.01, None) == (
        "php-fpm exited 0 after 0.01 s: it probably daemonized itself (a server that left its "
        "process group is out of the supervisor's sight). Programs must run in the foreground; "
        "for php-fpm: --nodaemonize (-F)")
    assert daemonized_hint(["./mine"], 0.5, "7 (mine)") == (
        "exited 0 after 0.50 s and left 7 (mine) behind: it daemonized itself, and the "
        "supervisor cannot watch it. Programs must run in the foreground")


ESCAPE_NAME = """\
import ctypes, os, sys, time
if os.fork() == 0:
    ctypes.CDLL(None).prctl(15, b"\\x1b]0;PWN\\x07\\x1b[2J", 0, 0, 0)   # PR_SET_NAME
    time.sleep(60)
    os._exit(0)
time.sleep(0.3)
"""


def test_a_leftover_process_named_with_escapes_is_shown_printable(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    # A process names itself: its name went raw into the log, status and events (to the
    # operator's terminal: here an OSC title change and a screen clear).
    script = tmp_path / "esc.py"
    script.write_text(ESCAPE_NAME)
    d = daemon_factory({"e": {"command": [sys.executable, str(script)], "start_seconds": 2,
                              "restart": "never", "kill_timeout": 1}})
    d.start()
    row = wait_until(lambda: d.status_of("e:0"), 30, "the note of e:0",
                     ok=lambda row: bool(row["note"]))
    assert re.search(r"left \d+ \(\ufffd\]0;PWN\ufffd\ufffd\[2J\) behind", row["note"]), row
    status, log = d.ctl("status").stdout, d.log_text()
    assert "left " in status and "left " in log, (status, log)
    for text in (status, d.ctl("events").stdout, log):
        assert "\x1b" not in text and "\x07" not in text, text
