"""`import worker` must not pull in the daemon or its heavy dependencies."""

from __future__ import annotations

import subprocess
import sys

from worker_helpers import python_env

FORBIDDEN = ("supervisor", "loguru", "pydantic", "click", "psutil", "yaml")


def test_import_worker_imports_no_daemon_modules() -> None:
    code = (
        "import sys, worker, worker.api, worker.block, worker.ctlword\n"
        "from worker import Worker\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(worker.__file__)\n"
        "print(','.join(bad))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=python_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    path, bad = r.stdout.splitlines()
    assert path.endswith("worker/__init__.py"), path
    assert bad == "", f"import worker loaded: {bad}"
