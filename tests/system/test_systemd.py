"""systemd/supervisord.service under a real systemd 252 (systemd-nspawn; root only).

The unit file is installed unchanged; a drop-in only shortens the watchdog and restart delays.
/opt/pyvisor inside the container is a link to the venv running these tests (bound read-only
at the same path, with the checkout and the interpreter; see conftest.py).

The tests run in file order on one container and one service: start, reload, refused reload,
watchdog kill + adoption, SIGKILL of the daemon + adoption, graceful stop. Each asserts on
what it can see: systemctl's exit code and properties, `supervisorctl status`, the workers'
processes (found by their PYVISOR_INSTANCE variable) and their logs.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.system import nspawn

REPO = Path(__file__).resolve().parents[2]
UNIT = "supervisord.service"
CONFIG = "/etc/pyvisor/supervisord.yaml"
LOG_DIR = "/var/log/pyvisor"
PLAIN_START_SECONDS = 1.5

DROP_IN = """[Unit]
# this module starts the unit more often than a real machine would
StartLimitIntervalSec=0

[Service]
# test timings: a hung daemon is detected in 3 s and killed 2 s later
WatchdogSec=3s
TimeoutAbortSec=2s
RestartSec=0.5s
"""

PLAIN = r'''
import os, signal, sys, time
def on_term(signum, frame):
    print(f"plain {os.getpid()}: SIGTERM, exiting 0", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print(f"plain {os.getpid()}: started", flush=True)
while True:
    time.sleep(3600)
'''

# Every process with PYVISOR_INSTANCE in its environment, by instance (the daemon puts it
# in each worker's environment; workers here are single processes).
# Holds a process in ptrace-stop: unlike SIGSTOP (systemd follows its SIGTERM with SIGCONT)
# nothing but SIGKILL gets it out, like a daemon hung for real. Exits when the tracee dies.
TRACER = r'''
import ctypes, os, sys
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
if libc.ptrace(16, pid, 0, 0) != 0:          # PTRACE_ATTACH
    sys.exit(f"ptrace attach {pid}: errno {ctypes.get_errno()}")
while True:
    _, st = os.waitpid(pid, 0x40000000)      # __WALL; never resume it
    if os.WIFEXITED(st) or os.WIFSIGNALED(st):
        break
'''

PS_WORKERS = r'''
import json, os
found = {}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                continue
    except OSError:
        continue
    for kv in env:
        if kv.startswith(b"PYVISOR_INSTANCE="):
            found.setdefault(kv.split(b"=", 1)[1].decode(), []).append(int(pid))
print(json.dumps(found))
'''


def config_yaml(extra: bool = False) -> str:
    text = f"""supervisor:
  log_dir: {LOG_DIR}
workers:
  lib:
    command: [/opt/pyvisor/bin/python, -m, worker, --unit-ms, "100"]
    numprocs: 2
  plain:
    command: [/opt/pyvisor/bin/python, /opt/pyvisor-test/plain.py]
    start_seconds: {PLAIN_START_SECONDS}
"""
    if extra:
        text += """  extra:
    command: [/opt/pyvisor/bin/python, -m, worker, --unit-ms, "100"]
"""
    return text


class Svc:
    """The service under test, seen from the outside."""

    def __init__(self, c: nspawn.Container) -> None:
        self.c = c

    def prop(self, name: str) -> str:
        return self.c.prop(UNIT, name)

    def main_pid(self) -> str:
        """The daemon's PID, once systemd has one: "0" (between restarts) must never reach a
        kill or a tracer, where it names the caller's own process group."""
        return self.c.wait_for("the unit's MainPID", lambda: (
            m if (m := self.prop("MainPID")).isdigit() and int(m) > 1 else None),
            timeout=30, show=self.show)

    def journal(self) -> str:
        return self.c.journal(UNIT, 80)

    def ctl(self, *args: str) -> tuple[int, str]:
        p = self.c.ct("/opt/pyvisor/bin/supervisorctl", "-c", CONFIG, *args, timeout=60)
        return p.returncode, p.stdout + p.stderr

    def statuses(self) -> dict[str, str]:
        """instance -> state, from `supervisorctl status`."""
        _, out = self.ctl("status")
        return {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if len(ln.split()) > 1}

    def workers(self) -> dict[str, list[int]]:
        p = self.c.ct("/opt/pyvisor/bin/python", "-c", PS_WORKERS, check=True)
        found: dict[str, list[int]] = json.loads(p.stdout)
        return found

    def log(self, name: str) -> str:
        return self.c.ct("cat", f"{LOG_DIR}/{name}").stdout

    def show(self) -> str:
        return (f"--- systemctl status\n{self.c.ct('systemctl', 'status', UNIT).stdout}\n"
                f"--- supervisorctl status\n{self.ctl('status')[1]}\n"
                f"--- workers {self.workers()}\n--- journal\n{self.journal()}")

    def restarted(self, old_main: str, restarts: int) -> bool:
        main = self.prop("MainPID")
        return (int(self.prop("NRestarts") or 0) >= restarts and main not in ("0", old_main)
                and self.prop("ActiveState") == "active" and self.prop("SubState") == "running")


@pytest.fixture(scope="module")
def svc(container: nspawn.Container) -> Svc:
    c = container
    c.write(f"/etc/systemd/system/{UNIT}", (REPO / "systemd" / UNIT).read_text())
    c.write(f"/etc/systemd/system/{UNIT}.d/test.conf", DROP_IN)
    c.write("/opt/pyvisor-test/plain.py", PLAIN)
    c.write(CONFIG, config_yaml())
    c.ct("systemctl", "daemon-reload", check=True)
    return Svc(c)


def one_each(workers: dict[str, list[int]]) -> dict[str, int]:
    dup = {k: v for k, v in workers.items() if len(v) != 1}
    assert not dup, f"duplicate worker processes: {dup}"
    return {k: v[0] for k, v in workers.items()}


def test_unit_verifies_inside(svc: Svc) -> None:
    p = svc.c.ct("systemd-analyze", "verify", "--recursive-errors=yes",
                 f"/etc/systemd/system/{UNIT}")
    assert p.returncode == 0 and UNIT not in p.stderr, p.stderr


def test_start_returns_after_ready(svc: Svc) -> None:
    t0 = time.monotonic()
    p = svc.c.ct("systemctl", "start", UNIT, timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 0, f"systemctl start rc={p.returncode} {p.stderr}\n{svc.show()}"
    # READY=1 only once every autostart worker is up: the plain one counts as up after
    # start_seconds, so start cannot have returned sooner; right now, no polling, all run.
    assert took >= PLAIN_START_SECONDS - 0.1, f"start returned after {took:.2f}s\n{svc.show()}"
    states = svc.statuses()
    assert states == {"lib:0": "RUNNING", "lib:1": "RUNNING", "plain:0": "RUNNING"}, svc.show()
    assert svc.prop("ActiveState") == "active" and svc.prop("SubState") == "running"
    assert "3 running" in svc.prop("StatusText"), svc.show()
    assert svc.prop("WatchdogUSec") == "3s"
    one_each(svc.workers())
    # the hardening is in force (and the workers run under it): ProtectSystem=full -> /usr ro
    mounts = svc.c.ct("cat", f"/proc/{svc.prop('MainPID')}/mountinfo").stdout
    usr = [ln for ln in mounts.splitlines() if ln.split()[4] == "/usr"]
    assert usr and " ro," in " " + usr[-1].split()[5] + ",", f"/usr mounts: {usr}"


def _cgroup_of(svc: Svc, pid: int | str) -> str:
    text = svc.c.ct("cat", f"/proc/{pid}/cgroup", check=True).stdout
    return next(ln[3:] for ln in text.splitlines() if ln.startswith("0::"))


def test_instances_have_cgroups_in_the_delegated_subtree(svc: Svc) -> None:
    unit = svc.prop("ControlGroup")
    assert unit.endswith(f"/{UNIT}"), svc.show()
    daemon = _cgroup_of(svc, svc.prop("MainPID"))
    assert re.fullmatch(re.escape(unit) + r"/supervisord\.(pyvisor-[0-9a-f]{12})", daemon), daemon
    prefix = daemon.rsplit("/supervisord.", 1)[1]
    for inst, pid in one_each(svc.workers()).items():
        assert _cgroup_of(svc, pid) == f"{unit}/{prefix}/{inst}", svc.show()
    _, out = svc.ctl("status", "--json")
    rows = json.loads(out)
    assert all(r["cgroup"] and r["processes"] == 1 for r in rows), rows


def test_reload_applies_a_new_worker(svc: Svc) -> None:
    before = one_each(svc.workers())
    main = svc.prop("MainPID")
    svc.c.write(CONFIG, config_yaml(extra=True))
    p = svc.c.ct("systemctl", "reload", UNIT, timeout=120)
    assert p.returncode == 0, f"reload rc={p.returncode} {p.stderr}\n{svc.show()}"
    # `systemctl reload` waited for supervisorctl reload, which waits for the new worker
    states = svc.statuses()
    assert states.get("extra:0") == "RUNNING", f"after reload: {states}\n{svc.show()}"
    after = one_each(svc.workers())
    assert {k: after[k] for k in before} == before, "reload touched unchanged workers"
    assert svc.prop("MainPID") == main
    assert svc.prop("ActiveState") == "active"


def test_invalid_config_fails_reload_and_keeps_workers(svc: Svc) -> None:
    before = one_each(svc.workers())
    good = config_yaml(extra=True)
    svc.c.write(CONFIG, good + "  broken:\n    comand: [/bin/true]\n")
    try:
        p = svc.c.ct("systemctl", "reload", UNIT, timeout=120)
        assert p.returncode != 0, f"reload of an invalid config succeeded\n{svc.show()}"
        assert svc.prop("ActiveState") == "active", svc.show()
        assert "status=7" in svc.journal(), svc.show()   # supervisorctl's BAD_CONFIG
        assert one_each(svc.workers()) == before
        assert all(s == "RUNNING" for s in svc.statuses().values()), svc.show()
    finally:
        svc.c.write(CONFIG, good)


def test_watchdog_kills_a_hung_daemon_and_the_new_one_adopts(svc: Svc) -> None:
    before = one_each(svc.workers())
    main = svc.main_pid()
    restarts = int(svc.prop("NRestarts"))
    t0 = time.monotonic()
    svc.c.ct("kill", "-STOP", main, check=True)
    svc.c.wait_for("watchdog kill and restart", lambda: svc.restarted(main, restarts + 1),
                   timeout=30, show=svc.show)
    took = time.monotonic() - t0
    journal = svc.journal()
    assert "Watchdog timeout" in journal, svc.show()
    # PYTHONFAULTHANDLER=1 in the unit: the abort left the hung daemon's traceback behind
    assert "Fatal Python error: Aborted" in journal, svc.show()
    svc.c.wait_for("all instances RUNNING after adoption",
                   lambda: svc.statuses() == {k: "RUNNING" for k in before}, timeout=20,
                   show=svc.show)
    after = one_each(svc.workers())
    assert after == before, f"workers changed across the watchdog restart ({took:.1f}s)"
    print(f"watchdog: hung daemon {main} replaced after {took:.1f}s; adopted {after}")


def test_sigkill_of_the_daemon_leaves_no_duplicates(svc: Svc) -> None:
    before = one_each(svc.workers())
    main = svc.prop("MainPID")
    restarts = int(svc.prop("NRestarts"))
    svc.c.ct("systemctl", "kill", "--kill-whom=main", "--signal=SIGKILL", UNIT, check=True)
    svc.c.wait_for("restart after SIGKILL", lambda: svc.restarted(main, restarts + 1),
                   timeout=30, show=svc.show)
    svc.c.wait_for("all instances RUNNING after adoption",
                   lambda: svc.statuses() == {k: "RUNNING" for k in before}, timeout=20,
                   show=svc.show)
    after = one_each(svc.workers())
    assert after == before, "workers changed across the daemon's SIGKILL + restart"


def test_hung_at_stop_workers_outlive_the_unit_and_next_start_adopts(svc: Svc) -> None:
    """The KillMode=process trade-off: a daemon hung at `systemctl stop` is SIGKILLed after
    TimeoutStopSec, its workers stay (in the unit's cgroup) and the next start adopts them."""
    c = svc.c
    before = one_each(svc.workers())
    main = svc.main_pid()
    c.write(f"/etc/systemd/system/{UNIT}.d/hung.conf", "[Service]\nTimeoutStopSec=2s\n")
    c.ct("systemctl", "daemon-reload", check=True)
    try:
        c.write("/opt/pyvisor-test/tracer.py", TRACER)
        c.ct("systemd-run", "--unit=pyvisor-test-tracer", "--collect",
             "/opt/pyvisor/bin/python", "/opt/pyvisor-test/tracer.py", main, check=True)
        c.wait_for("the daemon in ptrace-stop",
                   lambda: "tracing stop" in c.ct("grep", "State:", f"/proc/{main}/status").stdout,
                   timeout=10, show=svc.show)
        p = c.ct("systemctl", "stop", UNIT, timeout=60)
        assert svc.prop("ActiveState") in ("failed", "inactive"), svc.show()
        assert svc.prop("Result") == "timeout", f"stop rc={p.returncode}\n{svc.show()}"
        assert one_each(svc.workers()) == before, "workers did not outlive the hung daemon"
        assert "remains running after unit stopped" in svc.journal(), svc.show()
    finally:
        c.ct("rm", "-f", f"/etc/systemd/system/{UNIT}.d/hung.conf")
        c.ct("systemctl", "daemon-reload", check=True)
    p = c.ct("systemctl", "start", UNIT, timeout=120)
    assert p.returncode == 0, f"start rc={p.returncode} {p.stderr}\n{svc.show()}"
    assert svc.statuses() == {k: "RUNNING" for k in before}, svc.show()
    assert one_each(svc.workers()) == before, "the next start did not adopt the leftovers"
    assert "adopted" in svc.journal(), svc.show()


def test_stop_is_graceful(svc: Svc) -> None:
    workers = one_each(svc.workers())
    assert workers, svc.show()
    lib = sorted(k for k in workers if not k.startswith("plain"))
    graceful_before = {k: svc.log(_log(k)).count("STOP_GRACEFUL received") for k in lib}
    cursor = svc.c.journal_cursor()
    t0 = time.monotonic()
    p = svc.c.ct("systemctl", "stop", UNIT, timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 0, f"stop rc={p.returncode} {p.stderr}\n{svc.show()}"
    assert took < 30, f"stop took {took:.1f}s (TimeoutStopSec=30s)"
    assert svc.prop("ActiveState") == "inactive"
    assert svc.prop("Result") == "success", svc.show()
    left = svc.workers()
    assert not left, f"worker processes outlived `systemctl stop`: {left}\n{svc.show()}"
    for k in lib:
        text = svc.log(_log(k))
        assert text.count("STOP_GRACEFUL received") == graceful_before[k] + 1, (
            f"{k} did not stop at a unit boundary:\n{text[-2000:]}")
        assert text.rstrip().endswith("exiting 0"), f"{k}:\n{text[-500:]}"
    plain = svc.log("plain-0.out.log")
    assert f"plain {workers['plain:0']}: SIGTERM, exiting 0" in plain, plain
    # with KillMode=process systemd would name any process left in the unit's cgroup
    since_stop = svc.c.journal(UNIT, 200, after=cursor)
    assert "remains running after unit stopped" not in since_stop, since_stop
    # the unit's whole cgroup subtree is empty (the instances' cgroups included)
    unified = svc.c.sh("test -d /sys/fs/cgroup/unified && echo /sys/fs/cgroup/unified || "
                       "echo /sys/fs/cgroup").stdout.strip()
    procs = svc.c.sh(f"find {unified}/system.slice -path '*{UNIT}*' -name cgroup.procs "
                     "-exec cat {} +").stdout.strip()
    # (systemd removes the unit's cgroup once it is empty; the slice is still there)
    assert svc.c.sh(f"test -f {unified}/system.slice/cgroup.procs && echo y").stdout.strip()
    assert not procs, f"processes left in the unit's cgroups: {procs}\n{svc.show()}"


def _log(instance: str) -> str:
    name, index = instance.split(":")
    return f"{name}-{index}.out.log"
