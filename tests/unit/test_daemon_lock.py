"""The one-daemon-per-config lock: a loser names the winner, even when it comes between the
winner's flock and its writing its PID in the file (a race CI caught)."""
from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest

from supervisor.daemon import LockedError, acquire_lock, release_lock


def test_loser_names_a_holder_that_writes_its_pid_late(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)     # held, but nothing written in it yet
    writer = threading.Timer(0.2, lambda: os.pwrite(fd, b"4242\n", 0))
    writer.start()
    try:
        with pytest.raises(LockedError, match=r"another supervisord \(pid 4242\) is already"):
            acquire_lock(path, "pyvisor.yaml", None)
    finally:
        writer.join()
        os.close(fd)


def test_loser_says_unknown_when_the_holder_never_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(LockedError, match=r"\(pid unknown\)"):
            acquire_lock(path, "pyvisor.yaml", None)
    finally:
        os.close(fd)


def test_the_winner_writes_its_pid_and_removes_the_file_when_done(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock.lock")
    fd = acquire_lock(path, "pyvisor.yaml", None)
    assert Path(path).read_text() == f"{os.getpid()}\n"
    release_lock(path, fd)
    assert not Path(path).exists()
