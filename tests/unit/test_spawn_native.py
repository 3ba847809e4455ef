"""supervisor._spawn with real processes: what the child is given (signals at their defaults and
unblocked, a session of its own, stdio, no other fd, its directory, the workers' RLIMIT_NOFILE,
the PATH search), and how each failure comes back (never an exception out of a half-made
child, never a child left unreaped)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import _spawn, spawn
from tests.support.wait import wait_until

SH = b"/bin/sh"


@pytest.fixture
def null() -> Iterator[int]:
    fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def run(tmp_path: Path, null: int, script: str, *, cwd: bytes | None = None,
        nofile: tuple[int, int] | None = None, cgroup_fd: int = -1) -> str:
    """Run sh -c script through _spawn.spawn; returns its stdout once it has exited."""
    out_path = tmp_path / "out.txt"
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        pid, pidfd, stage = _spawn.spawn([SH], [b"sh", b"-c", script.encode()],
                                         [b"PATH=/usr/bin:/bin"], cwd, (null, out, out), nofile,
                                         None, cgroup_fd)
    finally:
        os.close(out)
    assert pid > 0 and stage == 0
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    assert os.waitstatus_to_exitcode(status) == 0, out_path.read_text()
    return out_path.read_text()


def test_the_child_starts_clean(tmp_path: Path, null: int) -> None:
    leak = os.open(os.devnull, os.O_RDONLY)          # inheritable: must be closed all the same
    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        text = run(tmp_path, null, "echo blk $(grep SigBlk /proc/self/status | cut -f2); "
                   "echo ign $(grep SigIgn /proc/self/status | cut -f2); "
                   "echo fds $(ls /proc/self/fd); echo ids $$ $(ps -o sid=,pgid= -p $$); "
                   "echo cwd $(pwd); echo nofile $(ulimit -n)",
                   cwd=str(tmp_path).encode(), nofile=(123, 4096))
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        signal.signal(signal.SIGUSR1, old)
        os.close(leak)
    got = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in text.splitlines()}
    assert got["blk"] == "0" * 16, "no signal blocked"
    assert got["ign"] == "0" * 16, "no signal ignored (SIGPIPE, SIGUSR1 back to default)"
    assert got["fds"] == "0 1 2 3", "stdio only (3 is ls's own directory fd)"
    pid, sid, pgid = got["ids"].split()
    assert pid == sid == pgid, "a session and a process group of its own"
    assert got["cwd"] == str(tmp_path) and got["nofile"] == "123"
    assert mask == {signal.SIGUSR2}, "the caller's own mask is back after the spawn"


def test_exec_failures_come_back_with_errno_and_the_child_is_reaped(null: int,
                                                                    tmp_path: Path) -> None:
    env = [b"PATH=/nonexistent:/usr/bin"]
    assert _spawn.spawn([b"/nonexistent/x"], [b"x"], env, None, (null, null, null), None,
                        None, -1) == (0, 2, _spawn.ST_EXEC)
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    # the first error that is not "no such file" wins (as subprocess does)
    assert _spawn.spawn([b"/nonexistent/x", str(plain).encode()], [b"x"], env, None,
                        (null, null, null), None, None, -1) == (0, 13, _spawn.ST_EXEC)
    assert _spawn.spawn([b"/bin/true"], [b"true"], env, b"/nonexistent", (null, null, null),
                        None, None, -1) == (0, 2, _spawn.ST_CWD)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)            # nothing left to reap: spawn did it


def test_bad_arguments_are_refused_before_any_child(null: int) -> None:
    cases: list[tuple[Any, Any, Any]] = [
        ([], [b"x"], []), ([b"/bin/true"], [], []), ([b"/bin/tr\0ue"], [b"x"], []),
        ([b"/bin/true"], [b"x"], ["A=1"]), ([b"/bin/true"], [b"x"], [b"A=\0"])]
    for paths, argv, envp in cases:
        with pytest.raises((ValueError, TypeError)):
            _spawn.spawn(paths, argv, envp, None, (null, null, null), None, None, -1)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_spawn_py_reports_setup_failures_in_words(tmp_path: Path) -> None:
    req = spawn.SpawnRequest("w:0", ["true"], str(tmp_path / "gone"), {}, None, None, None,
                             "/x.w:0", None)
    with pytest.raises(spawn.ChildSetupError, match=r"cannot start in its directory .*gone.*: "
                                                     r"No such file or directory"):
        spawn.spawn(req)
    req = spawn.SpawnRequest("w:0", ["no-such-program-here"], None, {}, None, None, None,
                             "/x.w:0", None)
    with pytest.raises(FileNotFoundError):
        spawn.spawn(req)
    req = spawn.SpawnRequest("w:0", ["true"], None, {"A=B": "1"}, None, None, None, "/x.w:0",
                             None)
    with pytest.raises(ValueError, match="illegal environment variable name"):
        spawn.spawn(req)


def test_path_search_finds_the_program_and_the_pidfd_is_its(null: int) -> None:
    req = spawn.SpawnRequest("w:0", ["sleep", "100"], None, {}, None, None, None, "/x.w:0",
                             None)
    pid, pidfd = spawn.spawn(req)
    try:
        assert os.readlink(f"/proc/{pid}/exe").endswith("sleep")
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        wait_until(lambda: os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG), 10,
                   "the child to exit")
    finally:
        os.close(pidfd)


def test_with_placeholders_the_child_gets_stdio_and_the_placeholders_stay_devnull(
        tmp_path: Path, null: int) -> None:
    low = tuple(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) for _ in range(3))
    many = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(200)]
    out_path = tmp_path / "out.txt"
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        pid, pidfd, stage = _spawn.spawn(
            [SH], [b"sh", b"-c", b"echo out; echo err >&2; echo fds $(ls /proc/self/fd)"],
            [b"PATH=/usr/bin:/bin"], None, (null, out, out), None, None, -1,
            (low[0], low[1], low[2]))
        assert pid > 0 and stage == 0
        os.waitpid(pid, 0)
        os.close(pidfd)
        assert out_path.read_text() == "out\nerr\nfds 0 1 2 3\n"
        assert [os.readlink(f"/proc/self/fd/{fd}") for fd in low] == ["/dev/null"] * 3
        assert os.readlink(f"/proc/self/fd/{many[-1]}") == "/dev/null", "ours untouched"
    finally:
        for fd in (*low, *many, out):
            os.close(fd)


def _environment_of_a_worker(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    """What a worker spawned through spawn.spawn finds in its environment."""
    out = tmp_path / "env.bin"
    if out.exists():
        out.unlink()
    req = spawn.SpawnRequest("w:0", ["/bin/sh", "-c", f"cat /proc/$$/environ > {out}"], None,
                             extra, None, None, None, "/x.w:0", None)
    pid, pidfd = spawn.spawn(req)
    try:
        wait_until(lambda: os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG), 10,
                   "the child to exit")
    finally:
        os.close(pidfd)
    return dict(e.split("=", 1) for e in out.read_text().split("\0") if e)


def test_a_change_to_the_daemons_environment_reaches_the_next_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's own part of a worker's environment is worked out once and kept: it must
    be worked out again when os.environ changes (set, changed, removed), and a worker's own
    variables still win over it."""
    monkeypatch.setenv("PV_TEST_ENV", "one")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    env = _environment_of_a_worker(tmp_path, {})
    assert env["PV_TEST_ENV"] == "one" and "NOTIFY_SOCKET" not in env
    monkeypatch.setenv("PV_TEST_ENV", "two")
    assert _environment_of_a_worker(tmp_path, {})["PV_TEST_ENV"] == "two"
    assert _environment_of_a_worker(tmp_path, {"PV_TEST_ENV": "mine"})["PV_TEST_ENV"] == "mine"
    monkeypatch.delenv("PV_TEST_ENV")
    env = _environment_of_a_worker(tmp_path, {})
    assert "PV_TEST_ENV" not in env and env["PYVISOR_INSTANCE"] == "w:0"
