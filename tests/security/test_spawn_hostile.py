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
from tests.support.wait import wait_until

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI is root)")

# seccomp filter (classic BPF): clone3 (435 on every architecture) -> errno, else allow
_SECCOMP = """
import ctypes, errno, struct
libc = ctypes.CDLL(None, use_errno=True)
ERR = {err}
prog = b"".join(struct.pack("HBBI", *ins) for ins in [
    (0x20, 0, 0, 0), (0x15, 0, 1, 435), (0x06, 0, 0, 0x00050000 | ERR), (0x06, 0, 0, 0x7fff0000)])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(4, ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0                       # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(fp), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
assert ctypes.CDLL(None, use_errno=True).syscall(435, 0, 0) == -1 and ctypes.get_errno() == ERR
"""


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
            return sorted(os.listdir(f"/proc/{pid}/fd"), key=int)
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
    script = _SECCOMP.format(err=f"errno.{err}") + textwrap.dedent("""
        from supervisor import _spawn
        from tests.security.test_spawn_hostile import _fds_of_a_worker
        assert _spawn.HAVE_CGROUP == 0, _spawn.HAVE_CGROUP
        print(" ".join(_fds_of_a_worker()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "1", "2"]


@needs_root
@pytest.mark.parametrize("ids", [(-1, 0, ()), (0, -1, ()), (2**32, 0, ()), (0, 2**32, ()),
                                 (65534, 65534, (2**32,)), (65534, 65534, (-1,))])
def test_ids_the_kernel_reads_as_no_change_are_refused(null: int,
                                                       ids: tuple[int, int, tuple[int, ...]]
                                                       ) -> None:
    """setresuid(-1, -1, -1) leaves root in place, and 2**32 wraps to 0 (root): a passwd
    entry with such an id must not give a worker root."""
    with pytest.raises((ValueError, OverflowError)):
        _spawn.spawn([b"/bin/true"], [b"true"], [], None, (null, null, null), None, ids, -1)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
