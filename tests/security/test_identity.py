"""Identity and records the daemon reads at start-up, attacked (found by a red-team pass):
a worker that leaves a directory where its status page was, a corrupted intent record, and
another user's process claiming a block whose spawn was never recorded. Root only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from supervisor import paths
from tests.security.conftest import User, needs_root
from tests.support.daemon import DaemonFactory, pid_alive
from tests.support.wait import wait_until
from worker import block as blk
from worker.ctlpage import ControlBlock

pytestmark = [pytest.mark.root, needs_root]

PLAIN = {"command": "sleep 100000", "start_seconds": 0.1, "kill_timeout": 2}


def test_a_directory_left_for_the_status_page_cannot_crash_the_daemon(
        daemon_factory: DaemonFactory, other_user: User) -> None:
    vandal = ("name=$(dd if=/dev/shm/${PYVISOR_BLOCK#/} bs=1 skip=256 count=200 2>/dev/null "
              "| tr -d '\\000'); rm -f /dev/shm/${name#/}; mkdir /dev/shm/${name#/}; "
              "sleep 0.5; exit 3")
    d = daemon_factory({"v": {"command": ["sh", "-c", vandal], "user": other_user.name,
                              "start_seconds": 0.1, "restart": "never"},
                        "ok": PLAIN}).start()
    d.wait_state("v:0", "EXITED", timeout=20)
    assert d.proc is not None and d.proc.poll() is None, "the daemon died"
    assert d.status_of("ok:0")["state"] == "RUNNING"
    made = [p for p in Path("/dev/shm").glob(f"{d.prefix}.v:0.*") if p.is_dir()]
    assert made, "the vandal's directory is where its status page was"
    for p in made:                    # the vandal's, not the daemon's: this test removes it
        p.rmdir()


@pytest.mark.parametrize("deadline", [10**400, 1e300, float("inf")], ids=["huge-int",
                                                                          "huge", "inf"])
def test_a_corrupted_intent_record_cannot_crash_the_daemon(daemon_factory: DaemonFactory,
                                                           deadline: float) -> None:
    d = daemon_factory({"w": {**PLAIN, "graceful_timeout": 2}}).start()
    pid = d.wait_state("w:0", "RUNNING")["pid"]
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    record = {"boot_id": blk.read_boot_id().hex(), "instances": {"w:0": {
        "wanted": False, "stop": {"graceful": True, "deadline": deadline, "restart": False}}}}
    path = Path(paths.runtime_dir()) / f"intent-{d.prefix}.json"
    path.write_text(json.dumps(record).replace("Infinity", "1e999"))
    path.chmod(0o600)
    d.start()
    row = d.wait_state("w:0", "STOPPED", timeout=20)   # within the 2 s graceful wait, +kill
    assert row["pid"] is None and not pid_alive(pid)
    assert d.proc.poll() is None


def test_another_users_process_never_claims_an_unrecorded_block(
        daemon_factory: DaemonFactory, other_user: User) -> None:
    d = daemon_factory({"w": {**PLAIN, "autostart": False}})
    name = blk.shm_name(d.prefix, "w:0")
    ControlBlock.create(name, slot=0, supervisor_pid=os.getpid(), epoch=1).close()
    squatter = subprocess.Popen(["env", f"PYVISOR_BLOCK={name}", "setsid", "sleep", "1000"],
                                user=other_user.uid, group=other_user.gid, extra_groups=[],
                                cwd="/")
    try:
        wait_until(lambda: f"PYVISOR_BLOCK={name}".encode() in Path(
            f"/proc/{squatter.pid}/environ").read_bytes(), 10, "the squatter's environment")
        d.start()
        if "one cgroup per instance" in d.log_text():
            # its cgroup, which nobody else can join, holds nothing: the squatter is not
            # ours, the spawn never ran, and the instance is not held FATAL by another user
            d.wait_log("w:0 removing its control block")
            assert d.status_of("w:0")["state"] == "STOPPED"
            d.ctl("start", "w:0")
            d.wait_state("w:0", "RUNNING")
        else:
            row = d.wait_state("w:0", "FATAL")
            assert "cannot be verified" in row["fatal_reason"], row
        assert "adopted pid" not in d.log_text()
        d.stop()
        assert squatter.poll() is None, "root signalled another user's process"
    finally:
        squatter.kill()
        squatter.wait(10)
        blk.unlink_name(name)
        for p in Path("/dev/shm").glob(f"{d.prefix}.*"):
            p.unlink()
