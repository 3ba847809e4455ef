"""Where a daemon's files live, derived from its config file's path. Standard library only:
supervisorctl imports this, and its start-up time is its latency.

``supervisorctl -c FILE`` must reach the daemon running FILE without parsing YAML (PyYAML and
pydantic cost ~120 ms to import). So a running daemon writes a small *locator* file at a place
computed from the config's real path alone; it names the control socket (wherever the config
put it) and the daemon's PID.
"""

from __future__ import annotations

import contextlib
import json
import os

ENV_CONFIG = "PYVISOR_CONFIG"


def runtime_dir() -> str:
    """/run/pyvisor for root, else $XDG_RUNTIME_DIR/pyvisor, else /tmp/pyvisor-UID."""
    if os.geteuid() == 0:
        return "/run/pyvisor"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "pyvisor")
    return f"/tmp/pyvisor-{os.geteuid()}"


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


def write_locator(config_path: str, socket_path: str, pid: int) -> str:
    path = locator_path(config_path)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{pid}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"socket": socket_path, "pid": pid, "config": os.path.realpath(config_path)}, f)
    os.replace(tmp, path)
    return path


def read_locator(config_path: str) -> dict[str, object] | None:
    try:
        with open(locator_path(config_path), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def remove_locator(config_path: str, pid: int) -> None:
    doc = read_locator(config_path)
    if doc is not None and doc.get("pid") == pid:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(locator_path(config_path))
