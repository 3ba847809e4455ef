"""Adoption's cheaper path attacked: batched log lines against lines logged directly, and the
decisions of the PIDFD_GET_INFO path against the /proc fallback (the same, for every case)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from loguru import logger

from supervisor.logs import LOG_FORMAT, LineBatch


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    handler = logger.add(lines.append, level="INFO", format=LOG_FORMAT, colorize=False)
    try:
        yield lines
    finally:
        logger.remove(handler)


def _messages(lines: list[str]) -> list[str]:
    """The messages of LOG_FORMAT lines (date, time, level padded to 7, message)."""
    return [line[24 + 8:] for line in "".join(lines).splitlines()]


def test_a_line_logged_directly_during_a_batch_goes_after_the_batched_ones(
        log_lines: list[str]) -> None:
    with LineBatch() as batch:
        batch.add("INFO", "w:0 exited while supervisord was down")
        assert log_lines == []
        logger.warning("w:0 killing what its exited leader left")
        batch.add("INFO", "w:0 STOPPED -> EXITED")
        assert len(log_lines) == 2, "the batch is written out before the direct line"
    assert _messages(log_lines) == ["w:0 exited while supervisord was down",
                                    "w:0 killing what its exited leader left",
                                    "w:0 STOPPED -> EXITED"]
    logger.info("after the batch")
    assert _messages(log_lines)[-1] == "after the batch"


def test_another_threads_line_does_not_touch_the_batch(log_lines: list[str]) -> None:
    with LineBatch() as batch:
        batch.add("INFO", "held")
        t = threading.Thread(target=lambda: logger.info("from a thread"))
        t.start()
        t.join()
        assert _messages(log_lines) == ["from a thread"], "the batch is its thread's"
    assert _messages(log_lines) == ["from a thread", "held"]


def test_a_batch_is_written_out_when_its_block_raises(log_lines: list[str]) -> None:
    with pytest.raises(RuntimeError), LineBatch() as batch:
        batch.add("INFO", "before the error")
        raise RuntimeError("adoption failed")
    assert _messages(log_lines) == ["before the error"]
