"""The core's log lines written in batches (supervisor.logs.LineBatch): the same text as loguru
writes with LOG_FORMAT, in the same order as every other log call, filtered by the same level,
whatever the message holds."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator

import pytest
from loguru import logger

from supervisor.logs import LOG_FORMAT, LineBatch, setup_daemon_logging

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")


@pytest.fixture
def out() -> Iterator[list[str]]:
    """What the daemon's sink receives (the daemon's setup, then a list as its sink)."""
    got: list[str] = []
    setup_daemon_logging("INFO")
    logger.remove()
    logger.add(got.append, level="INFO", format=LOG_FORMAT, colorize=False)
    yield got
    logger.remove()
    logger.configure(patcher=None)
    LineBatch.level_no = None


def text(got: list[str]) -> list[str]:
    """The lines written, without their time."""
    lines = "".join(got).splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    return [STAMP.sub("", line) for line in lines]


def later() -> tuple[list[Callable[[], None]], Callable[[Callable[[], None]], object]]:
    pending: list[Callable[[], None]] = []
    return pending, pending.append


def test_lines_are_what_loguru_writes_and_one_write_per_run_of_a_level(out: list[str]) -> None:
    pending, schedule = later()
    batch = LineBatch(schedule)
    hostile = "w:0 {0} {name} <red>x</red> \\ %s {{"
    for message in ("w:1 RUNNING -> STOPPING (stop requested)", hostile):
        batch.log("INFO", message)
    batch.log("DEBUG", "w:2 below the level")
    batch.log("WARNING", "w:3 still alive")
    assert out == [] and len(pending) == 1        # nothing written before the turn ends
    pending[0]()
    assert len(out) == 2                          # INFO x2 in one write, then the WARNING
    logger.info(hostile)                          # loguru's own rendering of the same text
    logger.warning("w:3 still alive")
    lines = text(out)
    assert lines == ["INFO    w:1 RUNNING -> STOPPING (stop requested)", f"INFO    {hostile}",
                     "WARNING w:3 still alive", f"INFO    {hostile}", "WARNING w:3 still alive"]
    batch.close()


def test_any_other_log_call_writes_the_pending_lines_first(out: list[str]) -> None:
    pending, schedule = later()
    batch = LineBatch(schedule)
    batch.log("INFO", "a")
    batch.log("INFO", "b")
    logger.warning("c")
    batch.log("INFO", "d")
    logger.debug("below the level: no flush needed, nothing written")
    batch.close()                                 # close writes what is left
    batch.log("INFO", "e")                        # after close: at once
    assert text(out) == ["INFO    a", "INFO    b", "WARNING c", "INFO    d", "INFO    e"]


def test_other_threads_and_an_unconfigured_daemon_log_at_once(out: list[str]) -> None:
    pending, schedule = later()
    batch = LineBatch(schedule)
    t = threading.Thread(target=lambda: batch.log("INFO", "from a thread"))
    t.start()
    t.join()
    assert text(out) == ["INFO    from a thread"] and pending == []
    LineBatch.level_no = None                     # no setup_daemon_logging: plain loguru
    batch.log("INFO", "plain")
    assert text(out)[-1] == "INFO    plain" and pending == []
    batch.close()


def test_a_long_turn_writes_its_lines_as_it_goes(out: list[str]) -> None:
    """An adoption of 10,000 logs a line each in one turn: at most 500 are held."""
    pending, schedule = later()
    batch = LineBatch(schedule)
    for i in range(1200):
        batch.log("INFO", f"w:{i} line")
    assert "".join(out).count("\n") == 1000, "two full batches out, 200 held"
    batch.close()
    assert [line.split(" ")[0] for line in text(out)] == ["INFO"] * 1200
    assert [line.rsplit(" ", 2)[1] for line in text(out)] == [f"w:{i}" for i in range(1200)]
