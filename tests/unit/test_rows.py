"""The status table's line (control.rows.render_status_line) and its two formatters: the exact
text for each branch of a row, for hostile sizes too (huge counts, far-off times, a status text
with escapes and non-ASCII, names wider than the column)."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.control.rows import fmt_bytes, fmt_duration, render_status_line


def running(**over: Any) -> dict[str, Any]:
    f: dict[str, Any] = {
        "name": "plain:7", "state": "RUNNING", "pid": 4321, "uptime": 3725.9,
        "heartbeat_age": None, "work_done": None, "cpu_seconds": 0.01, "rss": 1150976,
        "processes": 1, "restarts": 0, "adopted": False, "status_text": None,
        "fatal_reason": None, "last_exit": None, "next_try": None, "last_output": None,
        "last_output_file": None, "note": None}
    f.update(over)
    return f


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0:00:00"), (59.999, "0:00:59"), (3599, "0:59:59"), (3600, "1:00:00"),
    (86399.9, "23:59:59"), (86400, "1d 00:00:00"), (90061, "1d 01:01:01"),
    (10**12, "11574074d 01:46:40"), (-0.5, "0:00:00"),
])
def test_fmt_duration(seconds: float, text: str) -> None:
    assert fmt_duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [
    (0, "0B"), (1023, "1023B"), (1024, "1.0K"), (1048575, "1024.0K"), (1048576, "1.0M"),
    (1073741824, "1.0G"), (2**64, "17179869184.0G"),
])
def test_fmt_bytes(n: int, text: str) -> None:
    assert fmt_bytes(n) == text


def test_a_running_row_shows_each_fact_it_has() -> None:
    assert render_status_line(running(), 10) == (
        "plain:7     RUNNING   pid 4321, uptime 1:02:05, hb -, work -, cpu 0.01s, mem 1.1M")
    assert render_status_line(running(
        uptime=None, heartbeat_age=0.04999, work_done=2**64, cpu_seconds=1e300, rss=None,
        processes=3, restarts=2, adopted=True, status_text="é\x1b[31m" + "x" * 80), 3) == (
        "plain:7  RUNNING   pid 4321, hb 0.0s ago, work 18446744073709551616, cpu "
        + f"{1e300:.2f}s, 3 processes, restarts 2, adopted  [é\x1b[31m" + "x" * 53 + "…]")
    # a count of one process, none and no restarts say nothing
    assert render_status_line(running(processes=None, restarts=0, cpu_seconds=None), 0) == (
        "plain:7  RUNNING   pid 4321, uptime 1:02:05, hb -, work -, mem 1.1M")


def test_the_state_column_in_colour_and_rows_without_a_process() -> None:
    assert render_status_line(running(), 7, colour=True).startswith(
        "plain:7  \x1b[32mRUNNING \x1b[0m  pid 4321,")
    assert render_status_line(running(
        state="BACKOFF", pid=None, last_exit="exit status 1", next_try="retry 1 of 3 in 1.0 s",
        restarts=4), 7) == (
        "plain:7  BACKOFF   last: exit status 1; retry 1 of 3 in 1.0 s; restarts 4")
    assert render_status_line(running(state="STOPPED", pid=None), 7) == "plain:7  STOPPED"
