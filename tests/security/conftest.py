"""Fixtures for the security tests: the e2e daemon fixtures, and a throw-away unprivileged
user (created with useradd, removed with userdel; every process of that uid is killed by PID
first).

The daemon fixtures and helpers are imported here only, so that they are easy to repoint."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = str(Path(__file__).resolve().parents[1])
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import helpers  # noqa: E402
from e2e.conftest import daemon, daemon_factory, pytest_runtest_makereport  # noqa: E402

__all__ = ["daemon", "daemon_factory", "helpers", "pytest_runtest_makereport"]


@dataclass
class UnprivilegedUser:
    name: str
    uid: int
    gid: int

    def run(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        """Run argv as this user (its own group only)."""
        return subprocess.run(argv, user=self.uid, group=self.gid, extra_groups=[],
                              check=False, capture_output=True, timeout=30, **kw)  # type: ignore[call-overload]

    def popen(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, user=self.uid, group=self.gid, extra_groups=[],
                                start_new_session=True, stdin=subprocess.DEVNULL)


def _pids_of_uid(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.fixture
def test_user() -> Iterator[UnprivilegedUser]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    name = "pvt" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/bin/sh", name], check=True, timeout=60)
    try:
        pw = pwd.getpwnam(name)
        yield UnprivilegedUser(name, pw.pw_uid, pw.pw_gid)
    finally:
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            uid = None
        if uid is not None:
            for pid in _pids_of_uid(uid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            helpers.wait_until(lambda: not [p for p in _pids_of_uid(uid) if helpers.pid_alive(p)],
                               10, f"processes of {name} to die")
        subprocess.run(["userdel", name], check=False, timeout=60)
