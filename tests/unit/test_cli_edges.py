"""Rough edges a newcomer hits first (issue 15): each asserts the whole output."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path

from tests.support.daemon import SUPERVISORCTL, SUPERVISORD


def run(*argv: str, cwd: Path | None = None) -> tuple[int, str, str]:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, cwd=cwd,
                       check=False)
    return p.returncode, p.stdout, p.stderr


def test_supervisord_version() -> None:
    assert run(SUPERVISORD, "--version") == (
        0, f"supervisord (pyvisor) {version('pyvisor')}\n", "")


def test_a_missing_config_file_is_named_as_such(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert run(SUPERVISORCTL, "-c", str(missing), "status") == (
        3, "", f"supervisorctl: no such config file: {missing} (and so no supervisord "
               "running it)\n")
