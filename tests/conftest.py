"""Suite-wide rules: in CI (CI=true) a skipped test is a failure, not a pass. And the two
fixtures of the control server's tests (unit and security): ``lt``, a daemon loop on a thread
of its own (tests/unit/test_server_harness.py), and ``sock_path``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def lt() -> Iterator[Any]:
    from tests.unit.test_server_harness import loop_thread_fixture
    yield from loop_thread_fixture()


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "ctl.sock")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        names = "\n  ".join(r.nodeid for r in skipped)
        print(f"\nCI=true: {len(skipped)} test(s) were skipped, which fails CI:\n  {names}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
