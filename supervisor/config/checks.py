"""Checks that look at a whole validated config at once: the control socket's mode and group,
depends_on (unknown workers, cycles), and log files that two instances would share. Each
returns ``(path, message)`` problems; load.load_config turns them into ConfigError lines.

The dependency goes one way: these checks read the models, and loading calls the checks (the
models know nothing of them).
"""

from __future__ import annotations

from supervisor.config.errors import unknown
from supervisor.config.models import Config
from supervisor.config.yamlfile import Path

Problem = tuple[Path, str]


def cross_checks(config: Config) -> list[Problem]:
    out: list[Problem] = []
    sup = config.supervisor
    if sup.socket_mode == 0o660 and sup.socket_group is None:
        out.append((("supervisor", "socket_mode"), ("'0660' needs socket_group (the group "
                    "allowed to connect)")))
    if sup.socket_mode == 0o600 and sup.socket_group is not None:
        out.append((("supervisor", "socket_group"), ("has no effect with socket_mode '0600'; "
                    "use socket_mode: '0660'")))
    names = list(config.workers)
    for name, worker in config.workers.items():
        for i, dep in enumerate(worker.depends_on):
            if dep not in config.workers:
                out.append((("workers", name, "depends_on", i), unknown("worker", dep, names)))
    out += _cycles(config)
    out += _log_collisions(config)
    return out


def _cycles(config: Config) -> list[Problem]:
    out: list[Problem] = []
    seen: set[frozenset[str]] = set()
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            cycle = stack[stack.index(name):]
            if frozenset(cycle) not in seen:
                seen.add(frozenset(cycle))
                start = min(cycle)
                cycle = cycle[cycle.index(start):] + cycle[:cycle.index(start)]
                out.append((("workers", start, "depends_on"),
                            "dependency cycle: " + " -> ".join(cycle + [start])))
            return
        if name in done or name not in config.workers:
            return
        for dep in config.workers[name].depends_on:
            visit(dep, stack + [name])
        done.add(name)

    for name in config.workers:
        visit(name, [])
    return out


def _log_collisions(config: Config) -> list[Problem]:
    """Two instances appending to one file would break its rotation (and be unreadable)."""
    out: list[Problem] = []
    owner: dict[str, str] = {}
    for name, worker in config.workers.items():
        for index in range(worker.numprocs):
            instance = f"{name}:{index}"
            out_err = worker.log_paths(name, index)
            for stream, path in zip(("stdout", "stderr"), out_err, strict=True):
                first = owner.setdefault(path, f"{instance} {stream}")
                where: Path = ("workers", name, stream, "path")
                if first.startswith(instance + " ") or any(p == where for p, _ in out):
                    continue
                if first.startswith(name + ":"):
                    msg = (f"all {worker.numprocs} instances would write to {path}; put "
                           "{index} or {instance} in the path")
                else:
                    msg = f"{instance} {stream} would write to the same file as {first}: {path}"
                out.append((where, msg))
    return out
