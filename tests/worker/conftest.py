"""Fixtures for the worker package's tests: uniquely named shm blocks and child processes,
all removed even when a test fails, plus a session check that nothing was left in /dev/shm."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# pytest puts tests/ on sys.path (for tests/conftest.py), and an editable install finds the
# real package only after sys.path has been searched: tests/worker/ is then imported as a
# namespace package "worker" (no __init__: `from worker import Worker` fails). Put the
# repository root first and, if an earlier-collected module already got the namespace
# package, replace it by the real one (submodules already imported are the same files and
# are reused as they are).
ROOT = Path(__file__).resolve().parents[2]
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))
if getattr(sys.modules.get("worker"), "__file__", "") is None:
    del sys.modules["worker"]


import worker  # noqa: F401
from worker.ctlpage import ControlBlock

SHM_DIR = Path("/dev/shm")
# One prefix per test session: "pvt" + 10 hex digits (no dot, a valid block prefix).
SESSION_PREFIX = "pvt" + uuid.uuid4().hex[:10]


def _leftovers() -> list[str]:
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(SESSION_PREFIX))


@pytest.fixture(scope="session", autouse=True)
def no_shm_left_behind() -> Iterator[None]:
    """Fail the session if any /dev/shm object with this session's prefix survives."""
    yield
    left = _leftovers()
    for name in left:
        (SHM_DIR / name).unlink(missing_ok=True)
    assert not left, f"tests left shm objects behind: {left}"


@pytest.fixture
def prefix() -> str:
    return SESSION_PREFIX


@pytest.fixture
def shm_names() -> Iterator[Callable[[str], str]]:
    """Factory of unique shm names ("/<prefix>.<instance>"); every one is unlinked after."""
    made: list[str] = []

    def make(instance: str = "w:0") -> str:
        name = f"/{SESSION_PREFIX}-{uuid.uuid4().hex[:8]}.{instance}"
        made.append(name)
        return name

    yield make
    for name in made:
        (SHM_DIR / name[1:]).unlink(missing_ok=True)


@pytest.fixture
def new_block(shm_names: Callable[[str], str]) -> Iterator[Callable[..., ControlBlock]]:
    """Factory: create a fresh ControlBlock; closed and unlinked after the test."""
    blocks: list[ControlBlock] = []

    def make(instance: str = "w:0", *, slot: int = 0, epoch: int = 42) -> ControlBlock:
        blk = ControlBlock.create(
            shm_names(instance), slot=slot, supervisor_pid=os.getpid(), epoch=epoch
        )
        blocks.append(blk)
        return blk

    yield make
    for blk in blocks:
        blk.unlink()
        try:
            blk.close()
        except BufferError:
            pass


@pytest.fixture
def block(new_block: Callable[..., ControlBlock]) -> ControlBlock:
    return new_block()


@pytest.fixture
def procs() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Factory of child processes (text pipes); each is killed and reaped after the test."""
    started: list[subprocess.Popen[str]] = []

    def spawn(args: list[str], **kw: object) -> subprocess.Popen[str]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        p: subprocess.Popen[str] = subprocess.Popen(args, **kw)  # type: ignore[call-overload]
        started.append(p)
        return p

    yield spawn
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)
