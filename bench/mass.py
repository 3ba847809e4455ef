"""Setups shared by the 1,000-worker benches: N plain or N library workers under either
supervisor, booted and awaited until all RUNNING."""

from __future__ import annotations

import time
from typing import Any

from harness import PV_BIN, PY_WORKER, Daemon, Run, coop_binary

SLEEP = "/bin/sleep"


KINDS = ("plain", "lib", "c")   # sleep; the Python library worker; the C cooperative worker


def command(kind: str) -> list[str]:
    if kind == "plain":
        return [SLEEP, "100000"]
    if kind == "c":
        return [coop_binary()]
    assert kind == "lib", f"kind must be one of {KINDS}"
    return [str(PV_BIN / "python3"), PY_WORKER]


def pyvisor_workers(kind: str, n: int, **extra: Any) -> dict[str, dict[str, Any]]:
    if kind == "plain":
        w: dict[str, Any] = {"command": command(kind), "numprocs": n, "start_seconds": 0}
    else:
        w = {"command": command(kind), "numprocs": n, "graceful_timeout": 10}
    w.update(extra)
    return {kind: w}


def supervisord_programs(kind: str, n: int, **extra: Any) -> dict[str, dict[str, Any]]:
    cmd = " ".join(command(kind))
    p: dict[str, Any] = {"command": cmd, "numprocs": n, "startsecs": 0, "stopwaitsecs": 10,
                         "autorestart": "true"}
    p.update(extra)
    return {kind: p}


def make(run: Run, side: str, kind: str, n: int, name: str | None = None) -> Daemon:
    name = name or f"{side[:2]}-{kind}"
    if side.startswith("pyvisor"):
        # pyvisor-nocg: the same daemon with process groups only (no cgroup per instance)
        return run.pyvisor(pyvisor_workers(kind, n), name=name,
                           cgroups=side != "pyvisor-nocg")
    return run.supervisord(supervisord_programs(kind, n), name=name)


def boot(d: Daemon, n: int, timeout: float = 300, step: float = 0.1) -> float:
    """Start d and wait until n RUNNING; returns seconds from start to all RUNNING."""
    t0 = d.start()
    t1 = d.wait_all_running(n, timeout, step)
    return t1 - t0


def sides(only: str | None) -> list[str]:
    """Both supervisors by default; --only pyvisor-nocg: pyvisor without cgroups (to compare
    with a run of --only pyvisor)."""
    if only == "pyvisor-nocg":
        return ["pyvisor-nocg"]
    return [s for s in ("pyvisor", "supervisord") if only in (None, s)]


_ = time
