"""supervisorctl's start-up is its latency: it imports click and the standard library only, and
its entry point (the fast path of status and pid) not even click."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.unit.test_ctl import REPO, child_env

FORBIDDEN = ("pydantic", "yaml", "psutil", "loguru", "posix_ipc", "worker")


def loaded_after(statement: str) -> list[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        timeout=60,
    )
    modules = json.loads(proc.stdout)
    assert isinstance(modules, list)
    return modules


def test_ctl_main_loads_no_heavy_module() -> None:
    modules = loaded_after("import supervisor.ctl.main, supervisor.ctl.cli")
    heavy = [m for m in modules if m.split(".")[0] in FORBIDDEN]
    assert heavy == [], f"import supervisor.ctl.main, supervisor.ctl.cli loaded {heavy}"
    ours = sorted(m for m in modules if m.startswith("supervisor"))
    stdlib_only = ("supervisor.ctl", "supervisor.names", "supervisor.paths", "supervisor.safefs",
                   "supervisor.jsonlite")
    assert all(
        m in ("supervisor", "supervisor.control", "supervisor.control.protocol",
              "supervisor.control.wire")
        or m.startswith(stdlib_only)
        for m in ours
    ), ours


def test_entry_point_loads_no_click() -> None:
    for statement in ("import supervisor.ctl.main", "import supervisor.ctl.readonly"):
        modules = loaded_after(statement)
        assert [m for m in modules if m.split(".")[0] == "click"] == [], statement
        assert "supervisor.ctl.cli" not in modules, statement
    # the click CLI does load it (so the check above can tell)
    assert "click" in loaded_after("import supervisor.ctl.cli")


# what the fast path may add to a bare interpreter's modules besides its own: C modules and
# tiny ones; not typing, re, json, enum, socket, selectors, contextlib, collections, threading
FAST_PATH_STDLIB = {"__future__", "errno", "_socket", "_json"}
FAST_PATH_OURS = {"supervisor", "supervisor.ctl", "supervisor.ctl.main", "supervisor.ctl.client",
                  "supervisor.ctl.readonly", "supervisor.ctl.out", "supervisor.ctl.tail",
                  "supervisor.paths", "supervisor.safefs", "supervisor.jsonlite",
                  "supervisor.control", "supervisor.control.wire"}


def modules_after(statement: str) -> set[str]:
    """sys.modules after statement, printed without importing anything more (not json)."""
    code = f"import sys; {statement}; sys.stdout.write('\\n'.join(sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, env=child_env(), cwd=REPO, timeout=60)
    return set(proc.stdout.split("\n"))


def test_fast_path_imports_only_what_it_needs() -> None:
    bare = modules_after("pass")
    assert "json" not in bare and "re" not in bare, sorted(bare)   # else this test sees nothing
    added = modules_after("import supervisor.ctl.main, supervisor.ctl.tail") - bare
    assert added - FAST_PATH_OURS == FAST_PATH_STDLIB, sorted(added - FAST_PATH_OURS)
    assert added & FAST_PATH_OURS == FAST_PATH_OURS


def test_importtime_shows_no_heavy_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c",
         "import supervisor.ctl.main, supervisor.ctl.cli"],
        check=True,
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        timeout=60,
    )
    names = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
    assert "supervisor.ctl.cli" in names, proc.stderr[-2000:]
    heavy = [n for n in names if n.split(".")[0] in FORBIDDEN]
    assert heavy == [], heavy


def test_supervisor_package_is_import_free() -> None:
    before = set(loaded_after("pass"))
    after = set(loaded_after("import supervisor"))
    assert sorted(after - before) == ["supervisor"]
