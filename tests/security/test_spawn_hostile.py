"""supervisor._spawn against what a root daemon meets: a seccomp profile without clone3
(docker's default answers ENOSYS, others EPERM), ids that mean "no change" to the kernel, and
fds of the daemon that a worker must never inherit."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import _spawn, spawn
from tests.support.daemon import DaemonFactory, fds_once_asleep
from tests.support.wait import wait_until

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI is root)")

# seccomp filters (classic BPF), run in a child python before it imports _spawn: ERRNO for
# clone3 (435 on every architecture), for close_range (436) with CLOSE_RANGE_UNSHARE (as a
# 5.8 kernel would answer it), or for every close_range (a kernel before 5.9)
_FILTERS = {
    "clone3": [(0x20, 0, 0, 0), (0x15, 0, 1, 435), (0x06, 0, 0, 0x00050000 | 0),
               (0x06, 0, 0, 0x7fff0000)],
    "unshare": [(0x20, 0, 0, 0), (0x15, 0, 3, 436), (0x20, 0, 0, 32), (0x45, 0, 1, 2),
                (0x06, 0, 0, 0x00050000 | 0), (0x06, 0, 0, 0x7fff0000)],
    "close_range": [(0x20, 0, 0, 0), (0x15, 0, 1, 436), (0x06, 0, 0, 0x00050000 | 0),
                    (0x06, 0, 0, 0x7fff0000)],
}
_SECCOMP = """
import ctypes, errno, struct
libc = ctypes.CDLL(None, use_errno=True)
ERR = {err}
prog = b"".join(struct.pack("HBBI", c, t, f, k | ERR if c == 6 and k >> 16 == 5 else k)
                for c, t, f, k in {filter})
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(len(prog) // 8, ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0                       # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(fp), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
"""


def _in_seccomp(name: str, err: str, body: str) -> list[str]:
    script = _SECCOMP.format(err=f"errno.{err}", filter=_FILTERS[name]) + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.fixture
def null() -> Iterator[int]:
    fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def _fds_of_a_worker() -> list[str]:
    """spawn.spawn() a sleep with daemon fds around (inheritable ones, below and above the
    placeholders); the names in /proc/<worker>/fd, then the worker is ended by its pidfd."""
    below = os.open(os.devnull, os.O_RDONLY)              # inheritable, below the placeholders
    spawn.reserve_low_fds()
    above = [os.open(os.devnull, os.O_RDONLY) for _ in range(50)]
    req = spawn.SpawnRequest("w:0", ["sleep", "100"], None, {}, None, None, None, "/x.w:0",
                             None)
    try:
        pid, pidfd = spawn.spawn(req)
        try:
            return fds_once_asleep(pid)
        finally:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            wait_until(lambda: os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG), 10,
                       "the worker to exit")
            os.close(pidfd)
    finally:
        for fd in (below, *above):
            os.close(fd)


def test_a_worker_inherits_no_daemon_fd() -> None:
    assert _fds_of_a_worker() == ["0", "1", "2"]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter tests x86_64's clone3")
@pytest.mark.parametrize("err", ["ENOSYS", "EPERM"])
def test_without_clone3_spawning_falls_back_to_clone(err: str) -> None:
    """As in a container whose seccomp profile refuses clone3: workers still start (without
    CLONE_INTO_CGROUP: HAVE_CGROUP is then false, and the caller enters the cgroup itself)."""
    assert _in_seccomp("clone3", err, """
        from supervisor import _spawn
        from tests.security.test_spawn_hostile import _fds_of_a_worker
        assert _spawn.HAVE_CGROUP == 0, _spawn.HAVE_CGROUP
        print(" ".join(_fds_of_a_worker()))
    """) == ["0", "1", "2"]


@pytest.mark.parametrize("name", ["unshare", "close_range"])
def test_without_close_range_unshare_the_child_still_closes_every_fd(name: str) -> None:
    """A kernel without CLOSE_RANGE_UNSHARE (or close_range): the first spawn learns it and
    is made again without the shared table; the next ones go there directly."""
    assert _in_seccomp(name, "EINVAL" if name == "unshare" else "ENOSYS", """
        from tests.security.test_spawn_hostile import _fds_of_a_worker
        print(" ".join(_fds_of_a_worker()), " ".join(_fds_of_a_worker()))
    """) == ["0", "1", "2"] * 2


@needs_root
@pytest.mark.parametrize("ids", [(-1, 0, ()), (0, -1, ()), (2**32, 0, ()), (0, 2**32, ()),
                                 (65534, 65534, (2**32,)), (65534, 65534, (-1,)),
                                 (2**64, 0, ()), (0, 0, (-2**70,))])
def test_ids_the_kernel_reads_as_no_change_are_refused(null: int,
                                                       ids: tuple[int, int, tuple[int, ...]]
                                                       ) -> None:
    """setresuid(-1, -1, -1) leaves root in place, and 2**32 wraps to 0 (root): a passwd
    entry with such an id must not give a worker root."""
    with pytest.raises(ValueError):      # what the spawner reports (OverflowError is not)
        _spawn.spawn([b"/bin/true"], [b"true"], [], None, (null, null, null), None, ids, -1)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


@needs_root
def test_python_code_run_while_parsing_cannot_free_the_argv_the_child_gets(
        tmp_path: Path, null: int) -> None:
    """An id is read through __index__ after argv was collected: a list emptied there must
    not leave the child reading freed (and reused) memory."""
    argv = [b"sh", b"-c", b"".join([b"echo ", b"A" * 200])]   # not shared with anyone
    junk: list[bytes] = []

    class Uid:
        def __index__(self) -> int:
            argv.clear()                                    # frees the bytes if not held
            junk.extend(b"".join([b"kill -9 $$ ", b"B" * 189]) for _ in range(2000))
            return 0

    out_path = tmp_path / "out"
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        pid, pidfd, stage = _spawn.spawn([b"/bin/sh"], argv, [], None, (null, out, out), None,
                                         (Uid(), 0, ()), -1)   # type: ignore[arg-type]
    finally:
        os.close(out)
    assert pid > 0 and stage == 0
    os.waitpid(pid, 0)
    os.close(pidfd)
    assert out_path.read_text() == "A" * 200 + "\n"


def test_umask_is_applied_and_minus_one_keeps_the_daemons(tmp_path: Path, null: int) -> None:
    def umask_of_child(mask: int) -> str:
        out_path = tmp_path / "umask"
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            pid, pidfd, stage = _spawn.spawn([b"/bin/sh"], [b"sh", b"-c", b"umask"], [], None,
                                             (null, out, out), None, None, -1, None, mask)
        finally:
            os.close(out)
        assert pid > 0 and stage == 0
        os.waitpid(pid, 0)
        os.close(pidfd)
        return out_path.read_text().strip()

    old = os.umask(0o022)
    try:
        assert umask_of_child(0o027) == "0027"
        assert umask_of_child(-1) == "0022"
        assert os.umask(0o022) == 0o022, "the daemon's own umask is untouched"
    finally:
        os.umask(old)
    for bad in (-2, 0o1000):
        with pytest.raises(ValueError):
            _spawn.spawn([b"/bin/true"], [b"true"], [], None, (null, null, null), None, None,
                         -1, None, bad)


def test_an_argv_over_the_kernels_limit_comes_back_as_e2big(null: int) -> None:
    argv = [b"true"] + [b"x" * 100_000] * 40                 # 4 MB: over ARG_MAX's share
    assert _spawn.spawn([b"/bin/true"], argv, [], None, (null, null, null), None, None,
                        -1) == (0, 7, _spawn.ST_EXEC)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_a_real_daemons_workers_have_only_their_stdio(daemon_factory: DaemonFactory) -> None:
    """The daemon holds pidfds, its socket, logs, locks: a worker (started before or after a
    restart, with or without a log file) gets fds 0, 1 and 2 only."""
    d = daemon_factory({"w": {"command": "sleep 1000", "start_seconds": 0, "numprocs": 3}})
    d.start()
    wait_until(lambda: len(d.pids()) == 3 and all(d.pids().values()), 20, "3 workers")
    before = d.pids()["w:1"]
    assert d.ctl("restart", "w:1").returncode == 0
    wait_until(lambda: d.pids().get("w:1") not in (None, 0, before), 20, "w:1 restarted")
    for name, pid in d.pids().items():
        assert fds_once_asleep(pid) == ["0", "1", "2"], name


@needs_root
def test_a_dropped_worker_keeps_no_id_group_or_capability_of_root(tmp_path: Path,
                                                                  null: int) -> None:
    out_path = tmp_path / "status"
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        pid, pidfd, stage = _spawn.spawn(
            [b"/bin/sh"], [b"sh", b"-c", b"grep -E '^(Uid|Gid|Groups|Cap...|NoNewPrivs):' "
                                         b"/proc/self/status"],
            [], None, (null, out, out), None, (65534, 65533, (65532,)), -1)
    finally:
        os.close(out)
    assert pid > 0 and stage == 0
    os.waitpid(pid, 0)
    os.close(pidfd)
    got = {k: v.split() for k, v in (line.split(":", 1) for line in
                                    out_path.read_text().splitlines())}
    assert got["Uid"] == ["65534"] * 4 and got["Gid"] == ["65533"] * 4   # real, eff, saved, fs
    assert got["Groups"] == ["65532"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert got[cap] == ["0" * 16], cap
