"""supervisord as PID 1 of a PID namespace (the container-entrypoint shape; root only).

`unshare --pid --fork --mount-proc supervisord -c FILE` makes the daemon PID 1 of a new PID
namespace, as in a container. PID 1 there has two extra duties:

* orphans are reparented to it, and it must reap them (else zombies pile up): a worker here
  double-forks grandchildren that outlive their parent and exit soon after;
* the kernel delivers only signals PID 1 has a handler for: SIGTERM from outside (as
  `docker stop` sends) must still stop every worker gracefully, and the daemon exits 0.

When PID 1 of a namespace exits the kernel SIGKILLs whatever is left in it, so "nothing left"
proves nothing here: the workers' own logs show whether they stopped gracefully.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.shm import remove_shm, shm_objects
from tests.support.wait import wait_until
from tests.system.nspawn import require_root

VENV_BIN = Path(sys.prefix) / "bin"
ORPHANS = 3

ORPHANER = r'''
import os, signal, sys, time
pids_file = sys.argv[1]
def on_term(signum, frame):
    print(f"orphaner {os.getpid()}: SIGTERM, exiting 0", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
for _ in range(int(sys.argv[2])):
    r, w = os.pipe()
    if os.fork() == 0:                  # child: fork the grandchild, report it, exit at once
        os.close(r)
        gc = os.fork()
        if gc == 0:                     # grandchild: outlive the child until released, then exit
            os.close(w)
            deadline = time.monotonic() + 60
            while not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:
                time.sleep(0.05)
            os._exit(0)
        os.write(w, f"{gc}\n".encode())
        os._exit(0)
    os.close(w)
    gc = os.read(r, 64).decode().strip()
    os.close(r)
    os.wait()                           # reap the child: the grandchild is now an orphan
    with open(pids_file, "a") as f:
        f.write(gc + "\n")
print(f"orphaner {os.getpid()}: made {sys.argv[2]} orphans", flush=True)
while True:
    time.sleep(3600)
'''


@dataclass
class Pid1:
    proc: subprocess.Popen[bytes]   # the unshare process (exits with PID 1's status)
    host_pid: int                   # host pid of the namespace's PID 1 (the daemon)
    tmp: Path
    config: Path
    prefix: str

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", str(self.config), *args],
                              check=False, capture_output=True, text=True, timeout=60)

    def daemon_log(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")

    def log(self, name: str) -> str:
        p = self.tmp / "logs" / name
        return p.read_text(errors="replace") if p.exists() else ""

    def show(self) -> str:
        return (f"--- status\n{self.ctl('status').stdout}\n"
                f"--- daemon log\n{self.daemon_log()[-3000:]}")


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name: [state, ppid, ...]; None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


@pytest.fixture
def pid1(tmp_path: Path) -> Iterator[Pid1]:
    require_root()
    prefix = f"pyvt{uuid.uuid4().hex[:12]}"
    (tmp_path / "orphaner.py").write_text(ORPHANER)
    config = tmp_path / "supervisord.yaml"
    py = VENV_BIN / "python"
    config.write_text(f"""supervisor:
  socket: {tmp_path}/ctl.sock
  log_dir: {tmp_path}/logs
  block_prefix: {prefix}
workers:
  lib:
    command: [{py}, -m, worker, --unit-ms, "100"]
    numprocs: 2
  orphaner:
    command: [{py}, {tmp_path}/orphaner.py, {tmp_path}/orphans.txt, "{ORPHANS}", {tmp_path}/release]
    start_seconds: 0.5
""")
    with open(tmp_path / "daemon.log", "wb") as log:   # the child keeps its own copy
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--",
             str(VENV_BIN / "supervisord"), "-c", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        kids = wait_until(lambda: children(proc.pid), 10, "the namespace's PID 1",
                          interval=0.05)
        assert isinstance(kids, list)
        yield Pid1(proc, kids[0], tmp_path, config, prefix)
    finally:
        if proc.poll() is None:
            for kid in children(proc.pid):   # SIGKILL of a namespace's PID 1 ends them all
                os.kill(kid, signal.SIGKILL)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        remove_shm(prefix + ".")


def test_pid1_reaps_orphans_and_stops_gracefully_on_sigterm(pid1: Pid1) -> None:
    daemon = pid1.host_pid
    wait_until(lambda: (s := pid1.ctl("status").stdout).count("RUNNING") == 3 and s,
               20, "all workers RUNNING", interval=0.05, show=pid1.show)
    # the daemon really is PID 1 of its namespace
    nspid = Path(f"/proc/{daemon}/status").read_text().split("NSpid:")[1].split("\n")[0].split()
    assert nspid[-1] == "1", f"NSpid of the daemon: {nspid}"

    orphans_file = pid1.tmp / "orphans.txt"
    wait_until(lambda: orphans_file.exists() and len(orphans_file.read_text().split()) == ORPHANS,
               10, f"{ORPHANS} orphans recorded", interval=0.05, show=pid1.show)
    orphans = [int(x) for x in orphans_file.read_text().split()]
    # (pids in the file are namespace pids; map them to host pids through NSpid)
    host_orphans = []
    for host in Path("/proc").iterdir():
        if host.name.isdigit():
            try:
                st = (host / "status").read_text()
            except OSError:
                continue
            ns = st.split("NSpid:")[1].split("\n")[0].split()
            if len(ns) >= 2 and int(ns[-1]) in orphans and os.readlink(
                    f"/proc/{host.name}/ns/pid") == os.readlink(f"/proc/{daemon}/ns/pid"):
                host_orphans.append(int(host.name))
    assert len(host_orphans) == ORPHANS, (orphans, host_orphans)
    seen_alive = 0
    for pid in host_orphans:
        fields = stat_fields(pid)
        if fields is not None:
            assert int(fields[1]) == daemon, f"orphan {pid} parent {fields[1]}, not PID 1"
            seen_alive += 1
    # they live until released: all are there, adopted by PID 1 (else the reaping below
    # would test nothing)
    assert seen_alive == ORPHANS, f"orphans gone before their release: {host_orphans}"
    (pid1.tmp / "release").touch()

    def zombies_left() -> list[tuple[int, str]]:
        return [(p, f[0]) for p in host_orphans if (f := stat_fields(p)) is not None]

    # released, they exit; PID 1 must reap them (no Z entry may stay behind)
    wait_until(lambda: not zombies_left(), 10, "every orphan reaped", interval=0.05,
               show=lambda: f"still there: {zombies_left()}\n{pid1.show()}")
    assert pid1.ctl("status").stdout.count("RUNNING") == 3, pid1.show()

    t0 = time.monotonic()
    os.kill(daemon, signal.SIGTERM)
    try:
        rc = pid1.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"PID 1 did not exit within 30 s of SIGTERM\n{pid1.show()}") from None
    took = time.monotonic() - t0
    assert rc == 0, f"PID 1 exited {rc} after SIGTERM ({took:.1f}s)\n{pid1.show()}"
    for name in ("lib-0.out.log", "lib-1.out.log"):
        text = pid1.log(name)
        assert "STOP_GRACEFUL received" in text and text.rstrip().endswith("exiting 0"), (
            f"{name} did not stop at a unit boundary:\n{text[-1000:]}\n{pid1.show()}")
    assert "SIGTERM, exiting 0" in pid1.log("orphaner-0.out.log"), pid1.show()
    assert "every worker stopped" in pid1.daemon_log(), pid1.daemon_log()[-2000:]
    left = shm_objects(pid1.prefix + ".")
    assert not left, f"control blocks left in /dev/shm after a clean stop: {left}"
