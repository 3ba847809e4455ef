"""Fixtures for the security tests: the e2e daemon fixtures, and a real unprivileged user.

The user is made with useradd for the session and removed afterwards (userdel), with every
process of that uid that the tests started ended by PID and every /dev/shm object it owns
removed, even when a test fails. Root only (CI is root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import daemon, daemon_factory, pytest_runtest_makereport

__all__ = ["daemon", "daemon_factory", "other_user", "pytest_runtest_makereport"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI is root)")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    def run(self, *argv: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv as this user (its own uid, gid and no supplementary groups)."""
        return subprocess.run(list(argv), user=self.uid, group=self.gid, extra_groups=[],
                              cwd=cwd or "/", capture_output=True, text=True, timeout=30,
                              check=False)


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="session")
def other_user() -> Iterator[User]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user (CI is root)")
    name = "pvt" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                    "--home-dir", "/nonexistent", "--shell", "/bin/sh", name],
                   check=True, capture_output=True)
    pw = pwd.getpwnam(name)
    user = User(name, pw.pw_uid, pw.pw_gid)
    try:
        yield user
    finally:
        # the uid is this session's own: every process running as it was started by a test
        for pid in _pids_of(user.uid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in Path("/dev/shm").iterdir():
            try:
                if p.lstat().st_uid == user.uid:
                    if p.is_dir() and not p.is_symlink():
                        p.rmdir()
                    else:
                        p.unlink()
            except OSError:
                pass
        subprocess.run(["userdel", name], check=False, capture_output=True)
