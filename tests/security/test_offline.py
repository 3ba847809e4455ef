"""supervisorctl with the daemon down reads control blocks (issue 15, item 4): read-only, and
trusting them no more than adoption does."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from supervisor.ctl import offline
from tests.support.shm import remove_shm
from worker import block as blk
from worker.ctlpage import ControlBlock


@pytest.fixture
def prefix() -> Iterator[str]:
    p = "t" + uuid.uuid4().hex[:8]
    yield p
    for entry in os.listdir(blk.SHM_DIR):
        if entry.startswith(p + "."):
            path = os.path.join(blk.SHM_DIR, entry)
            with contextlib.suppress(OSError):
                if os.path.isdir(path) and not os.path.islink(path):
                    os.rmdir(path)
                else:
                    os.unlink(path)
    remove_shm(p + ".")


def _block(prefix: str, instance: str, pid: int, ticks: int, uid: int, pgid: int) -> None:
    b = ControlBlock.create(blk.shm_name(prefix, instance), slot=0, supervisor_pid=os.getpid(),
                            epoch=1, uid=None, gid=None)
    b.set_spawned(pid, ticks, 1, 0, uid, pgid)
    b.close()


def test_only_verified_live_processes_count(prefix: str) -> None:
    sleeper = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        ticks = blk.proc_start_ticks(sleeper.pid)
        _block(prefix, "good:0", sleeper.pid, ticks, os.geteuid(), sleeper.pid)
        _block(prefix, "recycled:0", sleeper.pid, ticks + 1, os.geteuid(), sleeper.pid)
        _block(prefix, "otheruid:0", sleeper.pid, ticks, 12345, sleeper.pid)
        _block(prefix, "othergroup:0", sleeper.pid, ticks, os.geteuid(), 1)
        _block(prefix, "init:0", 1, blk.proc_start_ticks(1), 0, 1)   # pid 1 is never a worker
        _block(prefix, "huge:0", blk.PID_MAX + 5, 0, 0, 0)
        shm = blk.SHM_DIR
        with open(f"{shm}/{prefix}.garbage:0", "wb") as f:       # ours, the size, garbage
            f.write(os.urandom(blk.BLOCK_SIZE))
        os.chmod(f"{shm}/{prefix}.garbage:0", 0o600)
        os.symlink(f"{shm}/{prefix}.good:0", f"{shm}/{prefix}.link:0")
        os.mkdir(f"{shm}/{prefix}.dir:0")
        os.mkfifo(f"{shm}/{prefix}.fifo:0", 0o600)          # would block a plain open
        theirs = f"{shm}/{prefix}.theirs:0"
        with open(f"{shm}/{prefix}.good:0", "rb") as src, open(theirs, "wb") as dst:
            dst.write(src.read())
        os.chmod(theirs, 0o600)
        if os.geteuid() == 0:
            os.chown(theirs, 65534, 65534)
        before = {e: os.lstat(f"{shm}/{e}").st_mtime_ns for e in os.listdir(shm)
                  if e.startswith(prefix + ".")}
        found = offline.alive(prefix)
        assert found == [offline.Alive("good:0", sleeper.pid)] + (
            [] if os.geteuid() == 0 else [offline.Alive("theirs:0", sleeper.pid)]), found
        after = {e: os.lstat(f"{shm}/{e}").st_mtime_ns for e in os.listdir(shm)
                 if e.startswith(prefix + ".")}
        assert after == before, "nothing written, made or removed"
    finally:
        sleeper.kill()
        sleeper.wait(10)
    assert offline.alive(prefix) == []
