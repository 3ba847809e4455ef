"""Fixtures for end-to-end tests: real supervisord processes on configs in tmp_path.

    def test_x(daemon_factory):
        d = daemon_factory({"w": {"command": "sleep 1000", "start_seconds": 0.2}})
        d.start()
        assert d.ctl("status").returncode == 0

Every daemon made by the factory is cleaned up after the test, pass or fail (see
tests/support/daemon.py); a test that left a process, an shm object or a locator behind fails in
teardown, and a failed test gets the daemon's output printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonFactory, DaemonProcess, StartedDaemon


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def daemon_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DaemonFactory]:
    """make(workers, supervisor=None, name=..., subdir=None) -> DaemonProcess (not started)."""
    made: list[DaemonProcess] = []

    def make(workers: dict[str, Any], supervisor: dict[str, Any] | None = None,
             name: str = "pyvisor.yaml", subdir: str | None = None) -> DaemonProcess:
        where = tmp_path
        if subdir is not None:
            where = tmp_path / subdir
            where.mkdir(parents=True, exist_ok=True)
        d = DaemonProcess(where, workers, supervisor=supervisor, name=name)
        made.append(d)
        return d

    yield make
    problems: list[str] = []
    for d in made:
        left = d.cleanup()
        if left and not d.allow_leftovers:
            problems += [f"{d.config_path}: {what}" for what in left]
    failed = getattr(request.node, "rep_call", None)
    if (failed is not None and failed.failed) or problems:
        for d in made:
            print(f"--- supervisord output ({d.config_path}) ---\n{d.log_text()}")
    assert not problems, "the test left things behind:\n" + "\n".join(problems)


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> StartedDaemon:
    """Like daemon_factory, but the daemon is started: daemon(workers) -> running daemon."""
    def make(workers: dict[str, Any], supervisor: dict[str, Any] | None = None,
             name: str = "pyvisor.yaml", subdir: str | None = None) -> DaemonProcess:
        return daemon_factory(workers, supervisor, name, subdir).start()
    return make
