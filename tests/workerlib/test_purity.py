"""`import worker` must not pull in the daemon or its heavy dependencies."""

from __future__ import annotations

import subprocess
import sys

from tests.support.child import python_env

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


def test_import_worker_loads_only_what_it_needs() -> None:
    """Every supervised process imports worker, and pays for each module at start-up and again
    at exit (interpreter teardown): beyond a bare interpreter, only these may be loaded."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import worker\n"
        "print(','.join(sorted(set(sys.modules) - before)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=python_env(), check=False,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.strip().split(","))
    allowed = {"worker", "worker.api", "worker.block", "worker._ctlword", "posix_ipc", "mmap",
               "_socket", "__future__"}
    assert loaded <= allowed, f"import worker also loaded: {sorted(loaded - allowed)}"


def test_sigint_constant_matches_the_signal_module() -> None:
    import signal

    from worker import api

    assert api._SIGINT == signal.SIGINT
