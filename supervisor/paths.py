"""Where a daemon's files live, derived from its config file's path. Standard library only:
supervisorctl imports this, and its start-up time is its latency.

``supervisorctl -c FILE`` must reach the daemon running FILE without parsing YAML (PyYAML and
pydantic cost ~120 ms to import). So a running daemon writes a small *locator* file at a place
computed from the config's real path alone; it names the control socket (wherever the config
put it) and the daemon's PID.

The runtime directory holds the locator, and by default the socket and lock: it must be ours
alone (owner = euid, writable by nobody else; see safefs.private_dir), else it is refused, so
a directory another user made in /tmp can neither steer supervisorctl to a fake daemon nor
make the daemon write through a planted link.
"""

from __future__ import annotations

import os
import sys

from supervisor import safefs
from supervisor.jsonlite import dumps, loads  # json's, without its import (nor re's)

ENV_CONFIG = "PYVISOR_CONFIG"


def runtime_dir() -> str:
    """/run/pyvisor for root, else $XDG_RUNTIME_DIR/pyvisor, else /tmp/pyvisor-UID -- unless
    someone else already made that (anyone can, in /tmp): then ~/.local/state/pyvisor."""
    uid = os.geteuid()
    if uid == 0:
        return "/run/pyvisor"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return os.path.join(xdg, "pyvisor")
    tmp = f"/tmp/pyvisor-{uid}"
    try:
        squatted = os.lstat(tmp).st_uid != uid
    except OSError:
        squatted = False
    home = os.environ.get("HOME", "")
    if squatted and os.path.isabs(home):
        return os.path.join(home, ".local", "state", "pyvisor")
    return tmp


def worker_search_path(path: str | None) -> str:
    """The PATH a worker gets (from the daemon's own, ``path``): the daemon's interpreter
    directory first, so that `python3 -m worker` in a config runs with the venv where the
    worker library is installed."""
    bindir = os.path.dirname(sys.executable)
    path = path or "/usr/local/bin:/usr/bin:/bin"
    return path if bindir in path.split(os.pathsep) else bindir + os.pathsep + path


def config_key(config_path: str) -> str:
    """A short stable id of a config file: 12 hex digits of the FNV-1a hash of its real path.

    Not hashlib: loading OpenSSL costs every supervisorctl call ~7 ms, and the key only has to
    tell apart the configs of one user (whose runtime directory it lives in), not resist attack.
    """
    h = 0xCBF29CE484222325
    for byte in os.path.realpath(config_path).encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"[:12]


def locator_path(config_path: str) -> str:
    return os.path.join(runtime_dir(), f"{config_key(config_path)}.json")


def default_socket_path(config_path: str) -> str:
    return os.path.join(runtime_dir(), f"{config_key(config_path)}.sock")


def default_block_prefix(config_path: str) -> str:
    """Control-block names of one config never collide with another config's."""
    return f"pyvisor-{config_key(config_path)}"


MAX_LOCATOR = 64 * 1024


def write_locator(config_path: str, socket_path: str, pid: int) -> str:
    path = locator_path(config_path)
    doc = {"socket": socket_path, "pid": pid, "config": os.path.realpath(config_path),
           "pidns": pid_namespace()}
    dfd = safefs.private_dir(runtime_dir())
    try:
        safefs.write_atomic(dfd, os.path.basename(path), dumps(doc).encode())
    finally:
        os.close(dfd)
    return path


def read_locator(config_path: str) -> dict[str, object] | None:
    """The locator of config_path's daemon, None when there is none (or it is garbage).
    Raises UnsafePathError when the runtime directory or the file is not ours."""
    path = locator_path(config_path)
    try:
        dfd = safefs.private_dir(runtime_dir(), create=False)
    except FileNotFoundError:
        return None
    try:
        raw = safefs.read_small(dfd, os.path.basename(path), path, MAX_LOCATOR, os.geteuid())
        doc = loads(raw)
    except FileNotFoundError:
        return None
    except (ValueError, RecursionError):   # not JSON, not UTF-8, nested past the parser
        return None
    finally:
        os.close(dfd)
    return doc if isinstance(doc, dict) else None


MAX_LOCATORS = 1000      # entries of the runtime directory looked at, at most


def running_configs() -> list[str]:
    """The configs that a live daemon of this user runs, from the locators in the runtime
    directory (ours alone: read_small checks the owner of each file, private_dir the
    directory). A locator counts only if it is consistent (its name is its config's key) and
    its pid is alive; at most MAX_LOCATORS entries are looked at."""
    try:
        dfd = safefs.private_dir(runtime_dir(), create=False)
    except OSError:
        return []
    found: list[str] = []
    try:
        for i, name in enumerate(os.listdir(dfd)):
            if i >= MAX_LOCATORS:
                break
            if not (name.endswith(".json") and len(name) == 17
                    and all(c in "0123456789abcdef" for c in name[:12])):
                continue
            try:
                doc = loads(safefs.read_small(dfd, name, name, MAX_LOCATOR, os.geteuid()))
            except (OSError, ValueError, RecursionError):
                continue
            config, pid = (doc.get("config"), doc.get("pid")) if isinstance(doc, dict) else (
                None, None)
            if not isinstance(config, str) or not isinstance(pid, int) or pid <= 0:
                continue
            if config_key(config) != name[:12] or not pid_alive(pid):
                continue
            found.append(config)
    finally:
        os.close(dfd)
    return sorted(found)


def pid_namespace() -> int | None:
    """The inode of this process's PID namespace: a pid means something only inside it (a
    daemon that is PID 1 of a container may share the runtime directory with the host's)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_locator(config_path: str, pid: int) -> None:
    try:
        doc = read_locator(config_path)
    except OSError:
        return
    if doc is not None and doc.get("pid") == pid:
        try:  # noqa: SIM105 -- contextlib costs supervisorctl's start-up
            os.unlink(locator_path(config_path))
        except FileNotFoundError:
            pass
