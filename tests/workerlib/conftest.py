"""Fixtures for the worker package's tests: uniquely named shm blocks and child processes,
all removed even when a test fails, plus a session check that nothing was left in /dev/shm."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.child import Spawn
from tests.support.shm import remove_shm, unlink_shm
from worker.ctlpage import ControlBlock

# One prefix per test session: "pvt" + 10 hex digits (no dot, a valid block prefix).
SESSION_PREFIX = "pvt" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session", autouse=True)
def no_shm_left_behind() -> Iterator[None]:
    """Fail the session if any /dev/shm object with this session's prefix survives."""
    yield
    left = remove_shm(SESSION_PREFIX)
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
        unlink_shm(name)


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
        with contextlib.suppress(BufferError):
            blk.close()


@pytest.fixture
def block(new_block: Callable[..., ControlBlock]) -> ControlBlock:
    return new_block()


@pytest.fixture
def procs() -> Iterator[Spawn]:
    """Factory of child processes (text pipes); each is killed and reaped after the test."""
    started: list[subprocess.Popen[str]] = []

    def spawn(args: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        started.append(p)
        return p

    yield spawn
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)
