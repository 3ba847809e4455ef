"""Suite-wide rules: in CI (CI=true) a skipped test is a failure, not a pass."""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        names = "\n  ".join(r.nodeid for r in skipped)
        print(f"\nCI=true: {len(skipped)} test(s) were skipped, which fails CI:\n  {names}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
