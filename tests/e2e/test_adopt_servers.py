"""Adoption and intent that hold for real programs (issue 11): nginx, redis-server and a
setproctitle program overwrite the memory /proc/PID/environ reads, so adoption must rest on
what the daemon recorded itself. Each is started, the daemon is SIGKILLed (and separately
re-exec'd), and the same PIDs must be managed, with no second copy (by process and by socket),
and `stop` must stop the whole server. The operator's stops and starts are kept across a crash.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonFactory, DaemonProcess, pid_alive
from tests.support.wait import wait_until

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                  else None)
REDIS = shutil.which("redis-server")


def need(binary: str | None, what: str) -> str:
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is not installed: bash .ci/setup --test installs it")
        pytest.skip(f"{what} is not installed (bash .ci/setup --test installs it, as root)")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_dir(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (each server runs in its own:
    the way to count copies that does not trust what a program did to its argv or environ)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"/proc/{entry.name}/cwd") == str(directory) and pid_alive(
                        int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                pass
    return sorted(found)


def restart_daemon(d: DaemonProcess, how: str) -> None:
    if how == "sigkill":
        d.kill(signal.SIGKILL)
        assert d.proc is not None
        d.proc.wait(10)
        d.start()
    else:
        mark = d.log_mark()
        assert d.ctl("reexec").returncode == 0
        d.wait_log(r"supervisord \d+ running", after=mark, timeout=30)


def nginx_worker(tmp: Path) -> tuple[dict[str, Any], int]:
    port = free_port()
    (tmp / "nginx.conf").write_text(f"""daemon off; master_process on; worker_processes 2;
pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {tmp}/body;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }} }}
""")
    return {"command": [need(NGINX, "nginx"), "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
            "directory": str(tmp), "start_seconds": 1, "kill_timeout": 3}, port


def redis_worker(tmp: Path) -> tuple[dict[str, Any], int]:
    port = free_port()
    return {"command": [need(REDIS, "redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--daemonize", "no",
                        "--unixsocket", str(tmp / "redis.sock")],
            "directory": str(tmp), "start_seconds": 1, "kill_timeout": 3}, port


TITLE = textwrap.dedent("""
    import time, setproctitle
    setproctitle.setproctitle("titled-worker: waiting for jobs " + "x" * 200)
    print("titled", flush=True)
    while True:
        time.sleep(3600)
""")


def title_worker(tmp: Path) -> tuple[dict[str, Any], int]:
    (tmp / "titled.py").write_text(TITLE)
    return {"command": [sys.executable, str(tmp / "titled.py")], "directory": str(tmp),
            "start_seconds": 0.5}, 0


SERVERS = {"nginx": nginx_worker, "redis": redis_worker, "setproctitle": title_worker}


def answers(port: int) -> bool:
    if not port:
        return True
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("how", ["sigkill", "reexec"])
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_real_server_is_adopted_not_duplicated(daemon_factory: DaemonFactory, tmp_path: Path,
                                               server: str, how: str) -> None:
    home = tmp_path / server
    home.mkdir()
    worker, port = SERVERS[server](home)
    d = daemon_factory({"srv": worker}).start()
    pid = d.wait_state("srv:0", "RUNNING")["pid"]
    wait_until(lambda: answers(port), 10, f"{server} answering")
    if server == "setproctitle":
        wait_until(lambda: b"titled-worker" in Path(f"/proc/{pid}/cmdline").read_bytes(), 10,
                   "the new title")
    tree = wait_until(lambda: (p := in_dir(home)) and pid in p and p, 10, "the server's tree")
    restart_daemon(d, how)
    row = d.wait_state("srv:0", "RUNNING")
    assert row["pid"] == pid, f"{server} was not adopted: {row}\n{d.log_text()}"
    assert "adopted" in d.log_text()
    assert in_dir(home) == tree, "a second copy of the server is running"
    assert answers(port)
    r = d.ctl("stop", "srv")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: not in_dir(home), 10, f"every {server} process gone")
    restart_daemon(d, "sigkill")
    assert d.wait_state("srv:0", "STOPPED")["pid"] is None, "a stop was followed by a start"
    assert not in_dir(home)


def test_operator_stops_and_starts_survive_a_daemon_sigkill(daemon_factory: DaemonFactory
                                                           ) -> None:
    plain = {"command": "sleep 100000", "start_seconds": 0.1}
    d = daemon_factory({"a": plain, "b": plain, "c": {**plain, "autostart": False}}).start()
    d.wait_state("a:0", "RUNNING")
    assert d.ctl("stop", "a").returncode == 0
    assert d.ctl("start", "c").returncode == 0
    restart_daemon(d, "sigkill")
    d.wait_state("b:0", "RUNNING")
    d.wait_state("c:0", "RUNNING")
    assert d.status_of("a:0")["state"] == "STOPPED", d.log_text()
    # and a clean shutdown forgets them: the next start follows the config again
    assert d.stop() == 0
    d.start()
    d.wait_state("a:0", "RUNNING")
    assert d.status_of("c:0")["state"] == "STOPPED"


def test_signal_stop_in_flight_is_carried_on(daemon_factory: DaemonFactory) -> None:
    stubborn = {"command": ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
                "start_seconds": 0.1, "kill_timeout": 4, "restart": "always"}
    d = daemon_factory({"s": stubborn}).start()
    pid = d.wait_state("s:0", "RUNNING")["pid"]
    assert d.ctl("stop", "--no-wait", "s").returncode == 0
    d.wait_state("s:0", "STOPPING")
    restart_daemon(d, "sigkill")
    d.wait_log(r"s:0 STOPPED -> STOPPING \(adopted pid \d+.*while being stopped")
    row = d.wait_state("s:0", "STOPPED", timeout=20)
    assert row["pid"] is None and not pid_alive(pid)
    assert "RUNNING" not in d.log_text().split("while being stopped", 1)[1]


GRACEFUL = textwrap.dedent("""
    import sys, time
    from worker import Worker
    w = Worker()
    w.ready()
    w.wait_for_stop(3600)
    print("STOP_GRACEFUL seen", flush=True)
    time.sleep(3600)          # ignores the rest: the deadline must pass, then the signal
""")


def test_graceful_stop_in_flight_keeps_its_deadline(daemon_factory: DaemonFactory,
                                                    tmp_path: Path) -> None:
    (tmp_path / "g.py").write_text(GRACEFUL)
    d = daemon_factory({"g": {"command": [sys.executable, str(tmp_path / "g.py")],
                              "graceful_timeout": 6, "kill_timeout": 2}}).start()
    d.wait_state("g:0", "RUNNING")
    assert d.ctl("stop", "--graceful", "--no-wait", "g").returncode == 0
    d.wait_state("g:0", "STOPPING")
    restart_daemon(d, "sigkill")
    line = d.wait_log(r"g:0 STOPPED -> STOPPING \(adopted pid \d+, .*graceful, ([0-9.]+) s left")
    assert float(line.group(1)) < 6, "the graceful wait began again instead of carrying on"
    d.wait_state("g:0", "STOPPED", timeout=20)
    assert (d.log_dir / "g-0.out.log").read_text().count("STOP_GRACEFUL seen") == 1


def test_adopted_exit_is_reported_at_once(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({"w": {"command": "sleep 100000", "start_seconds": 0.1,
                              "restart": "never"}}).start()
    pid = d.wait_state("w:0", "RUNNING")["pid"]
    restart_daemon(d, "sigkill")
    d.wait_state("w:0", "RUNNING")
    os.kill(pid, signal.SIGKILL)
    d.wait_state("w:0", "EXITED", timeout=5)
    assert "still alive" not in d.log_text()


def test_exit_while_down_has_no_phantom_adoption(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({"w": {"command": "sleep 100000", "start_seconds": 0.1,
                              "restart": "on-failure"}}).start()
    pid = d.wait_state("w:0", "RUNNING")["pid"]
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, "the worker gone")
    mark = d.log_mark()
    d.start()
    d.wait_log(r"w:0 STOPPED -> STARTING \(exited while supervisord was down", after=mark)
    assert "adopted pid 0" not in d.log_text()
    d.wait_state("w:0", "RUNNING")


def test_adopted_worker_is_still_rotated(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    chatty = ["sh", "-c", "while :; do echo 0123456789012345678901234567890123456789; "
                          "sleep 0.01; done"]
    d = daemon_factory({"c": {"command": chatty, "start_seconds": 0.1,
                              "stdout": {"max_bytes": 8192, "backups": 2}}}).start()
    d.wait_state("c:0", "RUNNING")
    restart_daemon(d, "sigkill")
    d.wait_state("c:0", "RUNNING")
    log = d.log_dir / "c-0.out.log"
    backup = Path(f"{log}.1")
    backup.unlink(missing_ok=True)
    wait_until(backup.exists, 15, "a rotation after adoption")
    assert log.stat().st_size < 200_000
