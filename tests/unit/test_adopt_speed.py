"""The cheaper adoption path: one /proc/PID/stat read for every identity field, the daemon's
log lines written in batches, and the first rotation checks of adopted workers' logs deferred
to the loop."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from supervisor import adopt, pidinfo
from supervisor.logs import LOG_FORMAT, Rotator
from supervisor.loop import Loop
from supervisor.runtime import cgroups
from tests.support.wait import wait_until

# a comm that, split at its first ')', reads as a zombie in process group 1 with parent 1
HOSTILE_COMM = "x) Z 1 1 1 ("

SET_COMM = f"""
import ctypes, sys, time
ctypes.CDLL(None).prctl(15, {HOSTILE_COMM.encode()!r}, 0, 0, 0)   # PR_SET_NAME
print("set", flush=True)
time.sleep(60)
"""


def test_proc_stat_is_split_after_the_last_parenthesis_of_a_hostile_comm() -> None:
    p = subprocess.Popen([sys.executable, "-c", SET_COMM], stdout=subprocess.PIPE,
                         start_new_session=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == b"set\n"
        assert Path(f"/proc/{p.pid}/comm").read_text().strip() == HOSTILE_COMM[:15]
        proc = adopt._proc_stat(p.pid)
        assert proc.state in ("S", "R"), proc
        assert proc.pgrp == os.getpgid(p.pid) == p.pid
        assert proc.ppid == os.getpid()
        line = Path(f"/proc/{p.pid}/stat").read_text()
        assert proc.start_ticks == int(line[line.rindex(")") + 2:].split()[19])
    finally:
        p.kill()
        p.wait()


def test_proc_stat_of_a_process_that_is_gone_raises_lookup() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(FileNotFoundError):
        adopt._proc_stat(p.pid)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    handler = logger.add(lines.append, level="INFO", format=LOG_FORMAT, colorize=False)
    try:
        yield lines
    finally:
        logger.remove(handler)


def test_a_deferred_rotation_check_happens_in_the_loop(tmp_path: Path) -> None:
    big, gone = tmp_path / "big.log", tmp_path / "gone.log"
    big.write_bytes(b"x" * 5000)
    gone.write_bytes(b"y" * 5000)
    loop = Loop()
    rot = Rotator(loop)
    try:
        rot.watch(str(big), 1000, 1, later=True)
        rot.watch(str(gone), 1000, 1, later=True)
        rot.unwatch(str(gone))                       # forgotten before its check: untouched
        assert big.stat().st_size == 5000, "not checked before the loop runs"
        def rotated() -> bool:
            loop.run_once()
            return big.stat().st_size == 0
        wait_until(rotated, 5, "the deferred check to rotate big.log")
        assert (tmp_path / "big.log.1").read_bytes() == b"x" * 5000
        assert gone.stat().st_size == 5000 and not (tmp_path / "gone.log.1").exists()
    finally:
        rot.close()
        loop.close()


def _cgroup_dir_of(pid: int) -> str | None:
    mount = cgroups.cgroup2_mount()
    own = cgroups.own_cgroup(pid)
    return None if mount is None or own is None else os.path.normpath(mount + own)


def test_pidfd_info_names_the_real_uid_and_the_cgroup_directory() -> None:
    """Where the kernel has PIDFD_GET_INFO, its answer is what /proc says; where it has not,
    ids() says so (None) and adoption reads /proc."""
    p = subprocess.Popen(["sleep", "60"])
    fd = os.pidfd_open(p.pid)
    try:
        got = pidinfo.ids(fd, _cgroup_dir_of(os.getpid()))
        if got is None:
            pytest.skip("this kernel has no PIDFD_GET_INFO: adoption reads /proc")
        ruid, cgroup_id = got
        assert ruid == adopt._real_uid(p.pid) == os.getuid()
        where = _cgroup_dir_of(p.pid)
        if where is not None:
            assert cgroup_id == os.stat(where).st_ino
        p.kill()
        p.wait()
        with pytest.raises(ProcessLookupError):
            pidinfo.ids(fd, None)
    finally:
        os.close(fd)
        if p.poll() is None:
            p.kill()
            p.wait()
