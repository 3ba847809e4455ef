"""Adoption's cheaper path attacked: the decisions of the PIDFD_GET_INFO path against the /proc
fallback (the same, for every case). The batched log lines' order against lines logged
directly: tests/unit/test_log_batch.py and tests/e2e/test_adopt_redteam.py."""

from __future__ import annotations

import os
import resource
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import adopt, pidinfo, reconcile
from supervisor.runtime import cgroups
from tests.support.shm import remove_shm, shm_objects
from tests.support.wait import wait_until
from worker import block as blk
from worker.block import BLOCK_SIZE, STATUS_SIZE
from worker.ctlpage import ControlBlock, _new_page


@pytest.fixture
def prefix() -> Iterator[str]:
    """A block prefix of this test's own; whatever it left in /dev/shm is removed."""
    p = f"rt{os.getpid()}x{secrets.token_hex(3)}"
    try:
        yield p
    finally:
        remove_shm(p + ".")


def test_the_status_page_of_a_half_made_block_is_swept(prefix: str) -> None:
    """A daemon killed inside ControlBlock.create, after both pages exist but before the ctl
    page's header: the scan removes the unusable ctl page AND the status page it leaves (the
    sweep must not trust a listing made before that removal)."""
    ctl = blk.shm_name(prefix, "w:0")
    status = f"{ctl}.{os.urandom(8).hex()}"
    os.close(_new_page(status, STATUS_SIZE, 0o600))
    os.close(_new_page(ctl, BLOCK_SIZE, 0o600))           # magic 0: never initialised
    assert adopt.scan(prefix) == []
    assert shm_objects(prefix + ".") == [], "both pages of the half-made block are gone"


def test_the_status_page_of_a_foreign_ctl_page_is_left(prefix: str) -> None:
    """A ctl-page name that is not ours (mode 0666 here) is never read or removed, and neither
    is the status page next to it (it cannot be told whose it is)."""
    ctl = blk.shm_name(prefix, "w:0")
    status = f"{ctl}.{os.urandom(8).hex()}"
    os.close(_new_page(status, STATUS_SIZE, 0o600))
    os.close(_new_page(ctl, BLOCK_SIZE, 0o666))
    assert adopt.scan(prefix) == []
    assert shm_objects(prefix + ".") == sorted([ctl[1:], status[1:]])


SLEEP = ["sh", "-c", "echo 1; exec sleep 60"]     # (in a session of its own: see start)


def _decide(name: str, block: ControlBlock, ioctl: bool,
            monkeypatch: pytest.MonkeyPatch) -> str:
    """What verify() decides about block with PIDFD_GET_INFO used (ioctl) or not (/proc)."""
    monkeypatch.setattr(pidinfo, "_usable", ioctl)
    with block.reading():
        got = adopt.verify(name, block, {}, lambda _i, _p: None, None)
    if isinstance(got, str):
        return got
    pid, pidfd, _proc, _cg = got
    os.close(pidfd)
    return f"verified {pid}"


def test_the_ioctl_and_the_proc_fallback_decide_alike(prefix: str, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    fd = os.pidfd_open(os.getpid())
    try:
        if pidinfo._query(fd)[0] != os.getuid():
            pytest.skip("PIDFD_GET_INFO does not give the real uid here")
    except OSError:
        pytest.skip("this kernel has no PIDFD_GET_INFO: only the /proc path exists")
    finally:
        os.close(fd)
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True, cwd="/",
                             **kw)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline() == b"1\n"
        return p

    ours = start(SLEEP)
    theirs = start(SLEEP, user=65534, group=65534, extra_groups=[]) if os.geteuid() == 0 \
        else None
    zombie = start(["echo", "1"])
    wait_until(lambda: Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
               == "Z", 10, "the zombie")
    cases: dict[str, tuple[int, int, int, int]] = {      # pid, ticks, uid, pgid as recorded
        "ours": (ours.pid, adopt._proc_stat(ours.pid).start_ticks, os.getuid(), ours.pid),
        "recycled": (ours.pid, adopt._proc_stat(ours.pid).start_ticks + 1, os.getuid(),
                     ours.pid),
        "pgid": (ours.pid, adopt._proc_stat(ours.pid).start_ticks, os.getuid(), os.getpid()),
        "zombie": (zombie.pid, adopt._proc_stat(zombie.pid).start_ticks, os.getuid(),
                   zombie.pid),
    }
    if theirs is not None:
        cases["theirs"] = (theirs.pid, adopt._proc_stat(theirs.pid).start_ticks, 0, theirs.pid)
    try:
        decided: dict[str, str] = {}
        for case, (pid, ticks, uid, pgid) in cases.items():
            name = blk.shm_name(prefix, f"{case}:0")
            with ControlBlock.create(name, slot=0, supervisor_pid=os.getpid(), epoch=1) as b:
                b.set_spawned(pid, ticks, 1, 7, uid, pgid)
                by_ioctl = _decide(name, b, True, monkeypatch)
                by_proc = _decide(name, b, False, monkeypatch)
            assert by_ioctl == by_proc, case
            decided[case] = by_ioctl
        assert decided["ours"] == f"verified {ours.pid}"
        assert "recycled" in decided["recycled"] and "process group" in decided["pgid"]
        assert decided["zombie"] == "gone"
        if theirs is not None:
            assert decided["theirs"] == (f"unverifiable: pid {theirs.pid} runs as uid 65534, "
                                         "not 0")
    finally:
        _end(*procs)


@pytest.fixture
def tree(prefix: str) -> Iterator[cgroups.CgroupTree]:
    """A real cgroup tree of this test's own under the test's cgroup (pytest is not moved)."""
    mount, own = cgroups.cgroup2_mount(), cgroups.own_cgroup()
    if mount is None or own is None:
        pytest.skip("no cgroup2 hierarchy")
    base = os.path.normpath(mount + own)
    t = cgroups.CgroupTree(mount, base, prefix, os.path.join(base, "cgroup.procs"))
    try:
        os.mkdir(t.dir)
    except OSError as e:
        pytest.skip(f"cannot make a cgroup here: {e}")
    try:
        yield t
    finally:
        for path in [e.path for e in os.scandir(t.dir) if e.is_dir(follow_symlinks=False)]:
            Path(path, "cgroup.kill").write_text("1")
            wait_until(lambda: not t.populated(path), 10, "the cgroup empty")  # noqa: B023
            os.rmdir(path)
        os.rmdir(t.dir)


@pytest.mark.parametrize("ioctl", [True, False], ids=["ioctl", "proc"])
def test_a_leader_that_exits_after_the_scan_is_judged_by_where_it_was(
        prefix: str, tree: cgroups.CgroupTree, ioctl: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan verified the process; it exits (and is reaped) before reconcile looks at its
    cgroup, leaving a child there. Through the ioctl the cgroup id was read with the pidfd
    held: in its cgroup. The /proc path must decide the same, not read /proc/PID/cgroup of a
    pid that is gone (or reused) and call it a stray that is never started again."""
    if ioctl and not pidinfo._self_check(os.path.dirname(tree.home)):
        pytest.skip("PIDFD_GET_INFO is not usable here")
    monkeypatch.setattr(pidinfo, "_usable", ioctl)
    path = tree.prepare("w:0")
    p = subprocess.Popen(["sh", "-c", "read x; sleep 60 & echo 1; exec sleep 60"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    try:
        Path(path, "cgroup.procs").write_text(str(p.pid))
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(b"go\n")
        p.stdin.close()
        assert p.stdout.readline() == b"1\n"
        name = blk.shm_name(prefix, "w:0")
        with ControlBlock.create(name, slot=0, supervisor_pid=os.getpid(), epoch=1) as b:
            b.set_spawned(p.pid, adopt._proc_stat(p.pid).start_ticks, 1, 7, os.getuid(), p.pid)
        found = adopt.scan(prefix, lambda i, q: tree.contains(i, q),
                           os.path.dirname(tree.home))
        assert [f.pid for f in found] == [p.pid]
        f = found[0]
        p.kill()
        p.wait()                    # reaped: /proc/PID is gone, the pid may be reused
        try:
            assert tree.populated(path), "the leader's child is still in its cgroup"
            assert reconcile._outside_its_cgroup(tree, "w:0", p.pid, f.cgroup_id,
                                                 f.cgroup_path) == (True, "")
        finally:
            assert f.pidfd is not None
            os.close(f.pidfd)
            f.block.close()
    finally:
        _end(p)


@pytest.mark.parametrize("ioctl", [True, False], ids=["ioctl", "proc"])
def test_a_recorded_process_moved_to_another_cgroup_is_a_stray_either_way(
        prefix: str, tree: cgroups.CgroupTree, ioctl: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded pid, start time, uid and process group all match, but the process is in
    another cgroup of ours while the instance's cgroup holds other processes: not adopted,
    not signalled, not started again -- through the ioctl and through /proc alike."""
    if ioctl and not pidinfo._self_check(os.path.dirname(tree.home)):
        pytest.skip("PIDFD_GET_INFO is not usable here")
    monkeypatch.setattr(pidinfo, "_usable", ioctl)
    path, elsewhere = tree.prepare("w:0"), tree.prepare("other:0")
    p = subprocess.Popen(["sh", "-c", "read x; sleep 60 & echo 1; exec sleep 60"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    try:
        Path(path, "cgroup.procs").write_text(str(p.pid))
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(b"go\n")
        p.stdin.close()
        assert p.stdout.readline() == b"1\n"
        Path(elsewhere, "cgroup.procs").write_text(str(p.pid))   # the child stays in w:0
        name = blk.shm_name(prefix, "w:0")
        with ControlBlock.create(name, slot=0, supervisor_pid=os.getpid(), epoch=1) as b:
            b.set_spawned(p.pid, adopt._proc_stat(p.pid).start_ticks, 1, 7, os.getuid(), p.pid)
        found = adopt.scan(prefix, lambda i, q: tree.contains(i, q),
                           os.path.dirname(tree.home))
        assert [f.pid for f in found] == [p.pid]
        f = found[0]
        try:
            inside, stray = reconcile._outside_its_cgroup(tree, "w:0", p.pid, f.cgroup_id,
                                                          f.cgroup_path)
            assert inside is False and f"pid {p.pid} is not in the instance's cgroup" in stray
        finally:
            assert f.pidfd is not None
            os.close(f.pidfd)
            f.block.close()
    finally:
        _end(p)


def test_a_pid_reused_between_the_proc_reads_is_not_judged_by_the_new_process(
        prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The /proc path reads /proc/PID/stat, then /proc/PID/status, by number: a pidfd pins
    the process, not its number. If the worker exits and is reaped between the reads and its
    pid goes to another user's process, the second read describes that process. The worker
    is gone (and must be handled as exited), not an unverifiable process of uid 65534 that
    is never started again. The race is made here: the worker is killed and reaped for
    real just before the second read, which then returns what /proc says of the other
    process (what it says once the pid is reused)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (another user's process)")
    monkeypatch.setattr(pidinfo, "_usable", False)
    procs: list[subprocess.Popen[bytes]] = []
    for kw in ({}, {"user": 65534, "group": 65534, "extra_groups": []}):
        p = subprocess.Popen(["sh", "-c", "echo 1; exec sleep 60"], stdout=subprocess.PIPE,
                             start_new_session=True, cwd="/", **kw)  # type: ignore[call-overload]
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline() == b"1\n"
    worker, other = procs
    real_read = adopt._read_proc

    def racing_read(pid: int, name: str, size: int = 4096) -> bytes:
        if pid == worker.pid and name == "status":
            worker.kill()
            worker.wait()                    # reaped: its number is free
            return real_read(other.pid, name, size)
        return real_read(pid, name, size)

    monkeypatch.setattr(adopt, "_read_proc", racing_read)
    try:
        name = blk.shm_name(prefix, "w:0")
        with ControlBlock.create(name, slot=0, supervisor_pid=os.getpid(), epoch=1) as b:
            b.set_spawned(worker.pid, adopt._proc_stat(worker.pid).start_ticks, 1, 7,
                          os.getuid(), worker.pid)
            with b.reading():
                got = adopt.verify(name, b, {}, lambda _i, _p: None, None)
        assert got == "gone"
    finally:
        _end(*procs)


def test_the_proc_fallback_verifies_a_process_whose_pidfd_is_past_1023(
        prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adoption holds one pidfd per live instance, so past ~1,000 the next pidfd is numbered
    1024 or more, and select() refuses those: without PIDFD_GET_INFO (kernels before 6.13,
    and for a spawn never recorded) each such block was 'unverifiable: cannot inspect pid N:
    filedescriptor out of range in select()', its instance FATAL, its live process left
    unmanaged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard fd limit ({hard}) leaves no room for an fd past 1023")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = os.open("/dev/null", os.O_RDONLY)
    held = [os.dup2(filler, fd) for fd in range(3, 1100) if not _is_open(fd)]
    p = subprocess.Popen(SLEEP, stdout=subprocess.PIPE, start_new_session=True, cwd="/")
    try:
        assert p.stdout is not None and p.stdout.readline() == b"1\n"
        name = blk.shm_name(prefix, "w:0")
        with ControlBlock.create(name, slot=0, supervisor_pid=os.getpid(), epoch=1) as b:
            b.set_spawned(p.pid, adopt._proc_stat(p.pid).start_ticks, 1, 7, os.getuid(), p.pid)
            assert _decide(name, b, False, monkeypatch) == f"verified {p.pid}"
            p.kill()
            p.wait()
            assert _decide(name, b, False, monkeypatch) == "gone"
    finally:
        _end(p)
        for fd in held:
            os.close(fd)
        os.close(filler)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _end(*procs: subprocess.Popen[bytes]) -> None:
    """Kill (if still running), reap and close each of these children of the test."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
