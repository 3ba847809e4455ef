"""POSIX shared-memory objects the tests create, found and removed by name prefix.

A test's control blocks all carry a prefix of its own (a daemon's ``block_prefix``, a worker
test session's prefix), so whatever a test left in /dev/shm is found by that prefix alone,
and removed even when the test failed.
"""

from __future__ import annotations

from pathlib import Path

SHM_DIR = Path("/dev/shm")


def shm_objects(prefix: str) -> list[str]:
    """Names (without the leading '/') of the shm objects whose name starts with ``prefix``."""
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix))


def unlink_shm(name: str) -> None:
    """Unlink one shm object (``/name`` or ``name``), or remove the directory a hostile test
    worker made under such a name; gone already is fine."""
    path = SHM_DIR / name.lstrip("/")
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


def remove_shm(prefix: str) -> list[str]:
    """Unlink every shm object whose name starts with ``prefix``; returns the names it found
    (empty: there was nothing left)."""
    left = shm_objects(prefix)
    for name in left:
        unlink_shm(name)
    return left
