"""A worker is its whole process tree (issue 12): with one cgroup per instance, and with the
process-group fallback (``supervisor: {cgroups: false}``). Real processes throughout, and a
real nginx whose master is SIGKILLed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonFactory, ctl_hint, pid_alive, pids_with_block_prefix
from tests.support.wait import wait_until

MODES = [pytest.param(True, id="cgroup"), pytest.param(False, id="process-group")]


def _daemon(factory: DaemonFactory, cgroups: bool, workers: dict[str, Any]) -> Any:
    d = factory(workers, supervisor={"cgroups": cgroups}).start()
    if cgroups:
        d.wait_log(r"process trees: one cgroup per instance")
    else:
        d.wait_log(r"process trees: process groups only")
    return d


def _pid_in(path: Path) -> int:
    def read() -> str | None:
        return path.read_text().strip() if path.exists() else None
    return int(wait_until(read, 10, f"a pid in {path}"))


@pytest.mark.parametrize("cgroups", MODES)
def test_stop_kills_a_child_that_ignores_sigterm(daemon_factory: DaemonFactory,
                                                  tmp_path: Path, cgroups: bool) -> None:
    f = tmp_path / "child.pid"
    script = (f"sh -c 'trap \"\" TERM; echo $$ > {f}; exec sleep 1000' & exec sleep 1000")
    d = _daemon(daemon_factory, cgroups, {"w": {"command": ["sh", "-c", script],
                                                "start_seconds": 0.1, "kill_timeout": 2}})
    d.wait_state("w:0", "RUNNING")
    child = _pid_in(f)
    r = d.ctl("stop", "w")
    assert r.returncode == 0, r.stderr
    assert not pid_alive(child), "the stop left the worker's child running"
    d.wait_log(r"w:0 killing what its exited leader left in its (cgroup|process group)")


def test_double_forked_daemon_is_stopped_with_its_cgroup(daemon_factory: DaemonFactory,
                                                         tmp_path: Path) -> None:
    f = tmp_path / "daemonized.pid"
    script = f"(setsid sh -c 'echo $$ > {f}; exec sleep 1000' &); exec sleep 1000"
    d = _daemon(daemon_factory, True, {"w": {"command": ["sh", "-c", script],
                                             "start_seconds": 0.1}})
    d.wait_state("w:0", "RUNNING")
    escaped = _pid_in(f)
    assert os.getpgid(escaped) != d.status_of("w:0")["pid"], "it left the process group"
    assert d.status_of("w:0")["processes"] == 2
    assert d.ctl("stop", "w").returncode == 0
    assert not pid_alive(escaped), "a double-forked process outlived the stop"


@pytest.mark.parametrize("cgroups", MODES)
def test_grandchildren_of_a_crashing_worker_do_not_accumulate(daemon_factory: DaemonFactory,
                                                              cgroups: bool) -> None:
    script = "sleep 1000 & sleep 0.3; exit 1"
    d = _daemon(daemon_factory, cgroups, {"w": {"command": ["sh", "-c", script],
                                                "start_seconds": 0.1, "restart": "always",
                                                "crash_burst": 100}})
    wait_until(lambda: len(d.log_text().split("w:0 spawned pid")) > 4, 30, "3 restarts")
    # each incarnation's sleep is killed before the next one starts: at most the current one
    def cmdline(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:         # gone between the listing and this read: not left over
            return b""

    left = [p for p in pids_with_block_prefix(d.prefix) if cmdline(p) == b"sleep\x001000\x00"]
    assert len(left) <= 1, f"grandchildren accumulated: {left}"


def test_leftovers_of_a_leader_that_died_while_the_daemon_was_down_are_killed(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    f = tmp_path / "child.pid"
    script = f"sh -c 'echo $$ > {f}; exec sleep 1000' & exec sleep 1000"
    d = _daemon(daemon_factory, True, {"w": {"command": ["sh", "-c", script],
                                             "start_seconds": 0.1}})
    leader = d.wait_state("w:0", "RUNNING")["pid"]
    child = _pid_in(f)
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    os.kill(leader, signal.SIGKILL)
    wait_until(lambda: not pid_alive(leader), 10, "the leader gone")
    assert pid_alive(child)
    mark = d.log_mark()
    d.start()
    d.wait_log(r"w:0 killing what its exited leader left in its cgroup", after=mark)
    row = d.wait_state("w:0", "RUNNING")
    assert not pid_alive(child) and row["pid"] not in (leader, child)
    assert row["processes"] == 2, "the new tree alone: its leader and its new child"


def test_crash_loop_after_running_goes_fatal(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({"w": {"command": ["sh", "-c", "sleep 0.2; exit 3"],
                              "start_seconds": 0.05, "restart": "always", "crash_burst": 3,
                              "crash_interval": 60}}).start()
    row = d.wait_state("w:0", "FATAL", timeout=30)
    hint = f"Fix it, then: {ctl_hint(d.config_path)} start w"
    assert f"(a crash loop); giving up (FATAL). {hint}" in (row["fatal_reason"] or ""), row
    d.wait_log(r"w:0 RUNNING -> BACKOFF \(exited: exit status 3; restart=always; exit 2 within")


def test_status_counts_the_whole_tree(daemon_factory: DaemonFactory) -> None:
    d = _daemon(daemon_factory, True, {"w": {
        "command": ["sh", "-c", "sleep 1000 & sleep 1000 & exec sleep 1000"],
        "start_seconds": 0.1}})
    d.wait_state("w:0", "RUNNING")
    row = wait_until(lambda: (r := d.status_of("w:0"))["processes"] == 3 and r, 10,
                     "3 processes in the tree")
    assert row["cpu_seconds"] is not None and row["rss"] is not None
    assert row["cgroup"].endswith(f"/{d.prefix}/w:0")
    assert "3 processes" in d.ctl("status").stdout


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                  else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
        return str(r.read().decode())


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.mark.parametrize("cgroups", MODES)
def test_nginx_master_sigkilled_leaves_no_workers(daemon_factory: DaemonFactory,
                                                  tmp_path: Path, cgroups: bool) -> None:
    if NGINX is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed: bash .ci/setup --test installs nginx-light")
        pytest.skip("nginx is not installed (bash .ci/setup --test installs it, as root)")
    port = _free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""daemon off; master_process on; worker_processes 2;
pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {tmp_path}/body;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }} }}
""")
    d = _daemon(daemon_factory, cgroups, {"nginx": {
        "command": [NGINX, "-p", str(tmp_path), "-c", str(conf)],
        "start_seconds": 1, "restart": "always", "kill_timeout": 2}})
    master = d.wait_state("nginx:0", "RUNNING")["pid"]
    assert wait_until(lambda: _get(port) == "ok", 10, "nginx serving")
    def two_workers() -> list[int] | None:
        found = _children(master)
        return found if len(found) == 2 else None
    workers = wait_until(two_workers, 10, "2 nginx workers")
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(w) for w in workers), 10, "the old workers gone")
    new = wait_until(lambda: (r := d.status_of("nginx:0"))["state"] == "RUNNING"
                     and r["pid"] != master and r, 15, "a new master RUNNING")
    assert wait_until(lambda: _get(port) == "ok", 10, "the new master serving")
    assert len(_children(new["pid"])) == 2
    assert d.ctl("stop", "nginx").returncode == 0
    wait_until(lambda: not _children(new["pid"]), 10, "no nginx left")


def test_stopped_cgroups_are_removed_and_a_quick_restart_gets_its_own(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """The empty cgroups of a stop are removed off the loop (cgroups.Remover), and a start
    right after the stop (before or while they are removed) spawns into the instance's
    cgroup again: the spawn claims it first."""
    d = _daemon(daemon_factory, True, {"w": {"command": ["sleep", "1000"], "numprocs": 4,
                                             "start_seconds": 0.1}})
    for i in range(4):
        d.wait_state(f"w:{i}", "RUNNING")
    paths = {row["name"]: row["cgroup"] for row in d.status_json()}
    assert all(paths.values()), paths
    assert d.ctl("stop", "all").returncode == 0
    assert d.ctl("start", "all").returncode == 0           # at once: within the quiet time
    rows = {row["name"]: row for row in d.status_json()}
    for name, path in paths.items():
        assert rows[name]["state"] == "RUNNING" and rows[name]["cgroup"] == path, rows[name]
        assert os.path.isdir(path), f"{path} removed under a running instance"
    assert d.ctl("stop", "all").returncode == 0
    wait_until(lambda: not any(os.path.isdir(p) for p in paths.values()), 15,
               "the stopped instances' cgroups removed",
               show=lambda: str([p for p in paths.values() if os.path.isdir(p)]))


@pytest.mark.parametrize("cgroups", MODES)
def test_a_worker_killed_to_stop_it_runs_again_after_a_restart(
        daemon_factory: DaemonFactory, cgroups: bool) -> None:
    """A worker that ignores SIGTERM is stopped by SIGKILL (cgroup.kill with cgroups); its
    next process must live. On this kernel a process born by clone3 into a cgroup that
    cgroup.kill was written to is SIGKILLed at once, even once the cgroup is empty: the
    instance's cgroup is made anew first (cgroups.CgroupTree.prepare)."""
    d = _daemon(daemon_factory, cgroups, {"w": {
        "command": ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
        "start_seconds": 0.3, "kill_timeout": 0.3, "start_retries": 0}})
    d.wait_state("w:0", "RUNNING")
    for _ in range(2):
        first = d.pids()["w:0"]
        r = d.ctl("restart", "w")
        assert r.returncode == 0, r.stdout + r.stderr
        row = d.status_of("w:0")
        assert row["state"] == "RUNNING" and row["pid"] not in (None, first), row
    r = d.ctl("stop", "w")
    assert r.returncode == 0, r.stderr
    mark = d.log_mark()
    r = d.ctl("start", "w")                 # waits for RUNNING (start_seconds)
    assert r.returncode == 0, r.stdout + r.stderr
    pid = d.pids()["w:0"]
    assert pid_alive(pid) and "killed by signal 9" not in d.log_text()[mark:], d.log_text()


def test_a_cgroup_an_earlier_daemon_killed_is_made_anew_for_the_next_spawn(
        daemon_factory: DaemonFactory) -> None:
    """The daemon before wrote cgroup.kill to an instance's cgroup (it was stopping it) and
    died: the next daemon must not spawn into that cgroup as it is (its process would be
    SIGKILLed at once), but make it anew."""
    d = _daemon(daemon_factory, True, {"w": {"command": ["sleep", "1000"],
                                             "start_seconds": 0.3, "start_retries": 0}})
    row = d.wait_state("w:0", "RUNNING")
    path, leader = row["cgroup"], row["pid"]
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    Path(path, "cgroup.kill").write_text("1")      # what the daemon before did, then died
    wait_until(lambda: not pid_alive(leader), 10, "the killed leader gone")
    mark = d.log_mark()
    d.start()
    row = d.wait_state("w:0", "RUNNING")
    assert row["pid"] != leader and row["cgroup"] == path, row
    assert pid_alive(row["pid"]) and "killed by signal 9" not in d.log_text()[mark:], \
        d.log_text()[mark:]


@pytest.mark.parametrize("target", ["w", "all"])   # one instance; a batch (stop all)
def test_stop_signal_reaches_every_process_of_a_tree_of_900(daemon_factory: DaemonFactory,
                                                            target: str) -> None:
    """cgroupfs gives at most a page of cgroup.procs per read(): one read named the first
    ~680 members of a tree of 900 (5- or 6-digit PIDs), so the rest, each in a session of its
    own, never got stop_signal (only the SIGKILL after kill_timeout), and status counted 680
    processes."""
    n = 900
    script = (f"i=0; while [ $i -lt {n} ]; do setsid sleep 1000 & i=$((i+1)); done; "
              "trap '' TERM; exec sleep 1000")
    d = _daemon(daemon_factory, True, {"w": {"command": ["sh", "-c", script],
                                             "start_seconds": 0.1, "kill_timeout": 60},
                                       "v": {"command": ["sleep", "1000"], "numprocs": 2,
                                             "start_seconds": 0.1}})
    d.wait_state("w:0", "RUNNING")
    wait_until(lambda: d.status_of("w:0")["processes"] == n + 1, 30, f"{n + 1} processes")
    r = d.ctl("stop", "--signal", "--no-wait", target)
    assert r.returncode == 0, r.stderr
    try:
        wait_until(lambda: d.status_of("w:0")["processes"] == 1, 10,
                   "every sleep gone at its SIGTERM (the leader ignores it, and is SIGKILLed "
                   "only after kill_timeout)")
    finally:
        d.ctl("signal", "KILL", "w")
        d.wait_state("w:0", "STOPPED")
