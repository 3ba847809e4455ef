"""Files the daemon opens where others can write (issue 10, item 5), attacked by a real
unprivileged user: planted links and FIFOs in a log directory it owns, a socket directory
anyone can write, a runtime directory someone else made. Root only (CI is root)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import safefs
from tests.security.conftest import User, needs_root
from tests.support.daemon import SUPERVISORD, DaemonFactory
from tests.support.wait import wait_until

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture
def shared_dir(other_user: User) -> Iterator[Path]:
    """A directory tree the other user can reach (tmp_path is root's, 0700): base/ is root's
    0755, base/logs/ belongs to the other user."""
    base = Path(tempfile.mkdtemp(prefix="pvsec-"))
    try:
        base.chmod(0o755)
        logs = base / "logs"
        logs.mkdir()
        os.chown(logs, other_user.uid, other_user.gid)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def precious(base: Path) -> Path:
    p = base / "precious"
    p.write_text("root's data\n")
    p.chmod(0o600)
    return p


def test_log_path_planted_as_a_symlink_is_never_followed(
        daemon_factory: DaemonFactory, other_user: User, shared_dir: Path) -> None:
    target = precious(shared_dir)
    log = shared_dir / "logs" / "w.log"
    r = other_user.run("ln", "-s", str(target), str(log))
    assert r.returncode == 0, r.stderr
    d = daemon_factory({"w": {"command": "echo hello", "stdout": {"path": str(log)},
                              "start_retries": 0, "restart": "never"}}).start()
    d.wait_state("w:0", "FATAL")
    d.wait_log(r"spawn failed: refusing its output file .*w\.log: is a symbolic link")
    assert target.read_text() == "root's data\n", "root wrote through the planted link"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert log.is_symlink()


def test_symlinked_log_directory_in_a_users_directory_is_refused(
        daemon_factory: DaemonFactory, other_user: User, shared_dir: Path) -> None:
    victim = shared_dir / "victim"
    victim.mkdir(mode=0o700)
    r = other_user.run("ln", "-s", str(victim), str(shared_dir / "logs" / "sub"))
    assert r.returncode == 0, r.stderr
    log = shared_dir / "logs" / "sub" / "w.log"
    d = daemon_factory({"w": {"command": "echo hello", "stdout": {"path": str(log)},
                              "start_retries": 0, "restart": "never"}}).start()
    d.wait_state("w:0", "FATAL")
    assert list(victim.iterdir()) == [], "root created a file through a planted directory link"


def test_fifo_as_log_file_does_not_block_the_daemon(
        daemon_factory: DaemonFactory, other_user: User, shared_dir: Path) -> None:
    fifo = shared_dir / "logs" / "w.log"
    r = other_user.run("mkfifo", str(fifo))
    assert r.returncode == 0, r.stderr
    d = daemon_factory({"w": {"command": "echo hello", "stdout": {"path": str(fifo)},
                              "start_retries": 0, "restart": "never"},
                        "ok": {"command": "sleep 1000", "start_seconds": 0.1}}).start()
    d.wait_state("w:0", "FATAL")
    d.wait_log(r"w:0 STARTING -> FATAL \(spawn failed: refusing its output file .*w\.log: is a "
               r"FIFO or a device")
    d.wait_state("ok:0", "RUNNING")
    assert d.ctl("status").returncode in (0, 5)


def test_rotation_keeps_the_mode_and_never_follows_a_planted_backup(
        daemon_factory: DaemonFactory, other_user: User, shared_dir: Path) -> None:
    target = precious(shared_dir)
    log = shared_dir / "logs" / "w.log"
    r = other_user.run("ln", "-s", str(target), f"{log}.1")
    assert r.returncode == 0, r.stderr
    writer = "i=0; while [ $i -lt 400 ]; do echo 0123456789abcdef0123456789; i=$((i+1)); done; " \
             "exec sleep 1000"
    d = daemon_factory({"w": {"command": ["sh", "-c", writer], "start_seconds": 0.1,
                              "stdout": {"path": str(log), "max_bytes": 4096,
                                         "backups": 3}}}).start()
    d.wait_state("w:0", "RUNNING")
    backup = Path(f"{log}.1")
    wait_until(lambda: backup.exists() and not backup.is_symlink(), 15, "a real backup .1")
    assert target.read_text() == "root's data\n"
    assert stat.S_IMODE(backup.stat().st_mode) == stat.S_IMODE(log.stat().st_mode)
    assert Path(f"{log}.2").is_symlink(), "the planted link was moved aside, not followed"


def test_socket_in_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    sock = f"/tmp/pv-{uuid.uuid4().hex[:8]}.sock"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"supervisor: {{socket: {sock}, block_prefix: t{uuid.uuid4().hex[:8]}}}\n"
                   "workers: {w: {command: sleep 1000}}\n")
    r = subprocess.run([SUPERVISORD, "-c", str(cfg)], capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 2, r          # refused with the config (as --check refuses it)
    assert "c.yaml:1: supervisor.socket: /tmp: " in r.stderr, r.stderr
    assert "other users can write it" in r.stderr, r.stderr
    assert not os.path.exists(sock) and not os.path.exists(f"{sock}.lock")


def test_runtime_dir_made_by_another_user_is_refused(other_user: User, shared_dir: Path) -> None:
    sticky = shared_dir / "tmp"              # like /tmp: anyone may make a directory here
    sticky.mkdir()
    sticky.chmod(0o1777)
    planted = sticky / "pyvisor-1000"
    r = other_user.run("mkdir", "-m", "0777", str(planted))
    assert r.returncode == 0, r.stderr
    with pytest.raises(safefs.UnsafePathError, match="owned by uid"):
        safefs.private_dir(str(planted))
    link = shared_dir / "pyvisor-link"
    link.symlink_to(planted)
    with pytest.raises(safefs.UnsafePathError, match="not a directory"):
        safefs.private_dir(str(link))


def test_lock_planted_as_a_symlink_is_not_followed(other_user: User, tmp_path: Path) -> None:
    target = precious(tmp_path)
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    (d / "x.lock").symlink_to(target)
    fd = safefs.trusted_dir(str(d))
    try:
        with pytest.raises(safefs.UnsafePathError, match="symbolic link"):
            safefs.open_private(fd, "x.lock", str(d / "x.lock"))
    finally:
        os.close(fd)
    assert target.read_text() == "root's data\n"


def test_locator_of_another_owner_is_ignored(tmp_path: Path, other_user: User) -> None:
    d = tmp_path / "rt"
    d.mkdir(mode=0o700)
    (d / "k.json").write_text('{"socket": "/elsewhere"}')
    os.chown(d / "k.json", other_user.uid, other_user.gid)
    fd = safefs.private_dir(str(d))
    try:
        with pytest.raises(safefs.UnsafePathError, match="owned by uid"):
            safefs.read_small(fd, "k.json", str(d / "k.json"), 1024, os.geteuid())
    finally:
        os.close(fd)


def test_backups_of_a_huge_count_cost_nothing(tmp_path: Path) -> None:
    from supervisor.logs import rotate_if_larger
    log = tmp_path / "big.log"
    log.write_bytes(b"x" * 5000)
    rotate_if_larger(str(log), 100, 100_000_000)     # shifts only what exists: instant
    assert log.stat().st_size == 0 and (tmp_path / "big.log.1").stat().st_size == 5000


def test_unread_socket_state_is_not_ours(tmp_path: Path) -> None:
    # a path that exists as a socket owned by someone else is not adopted as our lock dir
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(tmp_path / "sock"))
        with pytest.raises(OSError):
            safefs.open_dir(str(tmp_path / "sock"))
    finally:
        s.close()


def test_a_log_made_huge_by_its_worker_rotates_at_once(tmp_path: Path) -> None:
    """A worker can ftruncate its stdout to any size: rotation copies at most the tail, so the
    daemon's loop is never held (it copied the whole file, and to the wrong offset)."""
    from supervisor.logs import MAX_BACKUP_COPY, rotate_if_larger
    log = tmp_path / "w.log"
    with open(log, "wb") as f:
        f.write(b"head\n")
        f.truncate(1 << 40)                          # 1 TiB, sparse
        f.seek((1 << 40) - 5)
        f.write(b"tail\n")
    t0 = time.monotonic()
    rotate_if_larger(str(log), 1024, 2)
    assert time.monotonic() - t0 < 10
    backup = (tmp_path / "w.log.1").read_bytes()
    assert backup.startswith(b"[pyvisor: the first ") and backup.endswith(b"tail\n")
    assert len(backup) <= MAX_BACKUP_COPY + 100 and log.stat().st_size == 0


def test_backup_is_a_faithful_copy(tmp_path: Path) -> None:
    from supervisor.logs import rotate_if_larger
    log = tmp_path / "w.log"
    data = b"".join(b"line %06d\n" % i for i in range(50_000))
    log.write_bytes(data)
    rotate_if_larger(str(log), 1024, 3)
    assert (tmp_path / "w.log.1").read_bytes() == data


def test_a_directory_planted_as_a_backup_does_not_stop_rotation(tmp_path: Path) -> None:
    from supervisor.logs import rotate_if_larger
    log = tmp_path / "w.log"
    log.write_bytes(b"x" * 5000)
    (tmp_path / "w.log.1").mkdir()
    (tmp_path / "w.log.1" / "keep").write_text("?")
    with pytest.raises(OSError, match="truncated it anyway"):
        rotate_if_larger(str(log), 100, 1)           # .1 must go, and a directory will not
    assert log.stat().st_size == 0, "the live log must be truncated all the same"


def test_socket_below_a_directory_another_user_owns_is_refused(
        other_user: User, shared_dir: Path, tmp_path: Path) -> None:
    """The user could swap the directory under the daemon between its checks and its chown
    of the socket (a rename race): every directory on the way must be unswappable."""
    theirs = shared_dir / "logs"                     # belongs to the other user
    run = theirs / "run"
    run.mkdir(mode=0o755)                            # root's, but inside theirs
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"supervisor: {{socket: {run / 's.sock'}, block_prefix: "
                   f"t{uuid.uuid4().hex[:8]}}}\nworkers: {{w: {{command: sleep 1000}}}}\n")
    r = subprocess.run([SUPERVISORD, "-c", str(cfg)], capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 2, r          # refused with the config (as --check refuses it)
    assert "another user could swap what is in it" in r.stderr, r.stderr
    assert not (run / "s.sock").exists()


SERVE = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); c.recv(65536)
c.sendall(b'{"code": 0, "out": "all fine, trust me\\\\n", "err": "", "data": null}\\n')
time.sleep(5)
"""


def test_supervisorctl_refuses_a_socket_another_user_serves(other_user: User,
                                                            shared_dir: Path) -> None:
    from supervisor.control.protocol import Request
    from supervisor.ctl.client import CtlError, exchange
    path = str(shared_dir / "logs" / "fake.sock")
    p = subprocess.Popen(["/usr/bin/python3", "-c", SERVE, path], user=other_user.uid,
                         group=other_user.gid, extra_groups=[], stdout=subprocess.PIPE,
                         text=True, cwd="/")
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        with pytest.raises(CtlError, match=r"served by uid \d+, neither root nor you"):
            exchange(path, Request.make("status"), 5, 5, "c.yaml")
    finally:
        p.kill()
        p.wait(10)


def test_tail_never_follows_a_planted_link(other_user: User, shared_dir: Path) -> None:
    from supervisor.ctl.tail import _open
    secret = precious(shared_dir)
    log = shared_dir / "logs" / "w.log"
    assert other_user.run("ln", "-s", str(secret), str(log)).returncode == 0
    with pytest.raises(safefs.UnsafePathError):
        _open(str(log))


def test_a_directory_as_log_file_is_named_as_such(tmp_path: Path) -> None:
    # It was "cannot start 'sleep': [Errno 21] Is a directory: 'out'": the program blamed, the
    # log file named by its last component only.
    from supervisor.runtime.spawning import describe_spawn_error

    (tmp_path / "out").mkdir()
    with pytest.raises(safefs.UnsafePathError) as info:
        safefs.open_append(str(tmp_path / "out"))
    assert describe_spawn_error(["sleep", "1"], info.value) == (
        f"refusing its output file {tmp_path / 'out'}: is a directory, not a file")


@pytest.mark.parametrize(("directory", "errnos"), [
    ("/proc/pyvisor-none", {errno.ENOENT}),                   # mkdir there: ENOENT
    ("/sys/pyvisor-none", {errno.EPERM, errno.EACCES}),      # sysfs: refused even to root
])
def test_a_log_directory_that_cannot_be_made_names_the_file(directory: str,
                                                             errnos: set[int]) -> None:
    # It was "cannot execute 'sleep': no such file or directory (check command and PATH)" (and
    # "permission denied" for /sys): a log_dir that cannot be made was blamed on the command.
    from supervisor.logs import open_output
    from supervisor.runtime.spawning import describe_spawn_error

    with pytest.raises(OSError) as info:
        open_output(f"{directory}/w-0.out.log")
    assert info.value.errno in errnos
    assert describe_spawn_error(["sleep", "1"], info.value) == (
        f"cannot open its output file {directory}/w-0.out.log: {os.strerror(info.value.errno)}")
