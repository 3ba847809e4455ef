"""What a worker publishes beside its state (status text, counters, gauges): the Python API,
the daemon's reader (worker.published through ControlBlock.worker_data), and the reader fed
hostile pages: garbage, a seqlock write that never ends, every slot used, unreadable pages."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from tests.support.child import Lines, python_env
from worker import Worker
from worker import block as B
from worker.api import WorkerError
from worker.ctlpage import ControlBlock
from worker.published import (
    TEXT_TRIES,
    MetricValue,
    WorkerData,
    clean_text,
    read_metrics,
    read_text,
    read_worker_data,
)

Spawn = Callable[..., subprocess.Popen[str]]


def page_reader(page: bytearray) -> Callable[[int, int], bytes]:
    """A Read over a status page held in memory (what a hostile worker left)."""
    return lambda size, off: bytes(page[off : off + size])


def test_text_and_metrics_round_trip(block: ControlBlock) -> None:
    with Worker(name=block.name) as w:
        assert block.worker_data() == WorkerData(None, (), 0)
        w.status("loading model 3/5")
        jobs = w.counter("jobs")
        jobs.inc()
        w.counter("jobs").inc(41)
        w.gauge("queue_depth").set(7)
        w.gauge("temp_delta").set(-3)
        assert w.counter("jobs") is jobs and jobs.value == 42
        assert block.worker_data() == WorkerData("loading model 3/5", (
            MetricValue("jobs", "counter", 42), MetricValue("queue_depth", "gauge", 7),
            MetricValue("temp_delta", "gauge", -3)), 0)  # fmt: skip
        w.gauge("queue_depth").dec(2)
        w.gauge("queue_depth").inc()
        w.status("")
        data = block.worker_data()
        assert data is not None and data.text is None
        assert data.metrics[1] == MetricValue("queue_depth", "gauge", 6)
        assert data.to_json()["metrics"][0] == {"name": "jobs", "kind": "counter", "value": 42}


def test_text_is_cut_at_a_character_boundary(block: ControlBlock) -> None:
    with Worker(name=block.name) as w:
        w.status("é" * 200)  # 400 bytes of UTF-8: 128 characters fit in 256 bytes
        data = block.worker_data()
        assert data is not None and data.text == "é" * 128
        w.status("a" + "€" * 100)  # 1 + 3*85 = 256 bytes
        data = block.worker_data()
        assert data is not None and data.text == "a" + "€" * 85


def test_names_kinds_and_the_slot_limit(block: ControlBlock) -> None:
    with Worker(name=block.name) as w:
        for bad in ("", "9lives", "a-b", "x" * 25, "naïve", "a b", "a\0"):
            with pytest.raises(ValueError, match="metric name"):
                w.counter(bad)
        w.counter("x" * 24).inc()
        with pytest.raises(ValueError, match="is a counter; it cannot also be a gauge"):
            w.gauge("x" * 24)
        with pytest.raises(TypeError, match="a counter only goes up"):
            w.counter("x" * 24).set(3)
        with pytest.raises(TypeError, match="never goes down"):
            w.counter("x" * 24).dec()
        with pytest.raises(ValueError, match="never goes down"):
            w.counter("x" * 24).inc(-1)
        for i in range(B.METRIC_COUNT - 1):
            w.gauge(f"g{i}").set(i)
        with pytest.raises(WorkerError, match=f"all {B.METRIC_COUNT} metric slots"):
            w.counter("one_too_many")
        data = block.worker_data()
        assert data is not None and len(data.metrics) == B.METRIC_COUNT and not data.bad_slots
        counter = w.counter("x" * 24)
    with pytest.raises(ValueError, match="control block is closed"):
        counter.inc()


def test_a_second_attach_finds_the_slots_already_claimed(block: ControlBlock) -> None:
    with Worker(name=block.name) as w:
        w.counter("jobs").inc(5)
        w.counter("errors")
    with Worker(name=block.name) as w:
        w.counter("jobs").inc()
        with pytest.raises(ValueError, match="is a counter in this block"):
            w.gauge("errors")
        data = block.worker_data()
        assert data is not None and data.metrics == (
            MetricValue("jobs", "counter", 6), MetricValue("errors", "counter", 0))


def hostile_page(seed: int) -> bytearray:
    rng = random.Random(seed)
    return bytearray(rng.randbytes(B.STATUS_SIZE))


@pytest.mark.parametrize("seed", range(200))
def test_random_garbage_reads_as_bounded_clean_values(seed: int) -> None:
    page = hostile_page(seed)
    if seed % 2:
        page[B.SOFF_TEXT_SEQ] &= 0xFE  # an even seq, so the text is read
        page[B.SOFF_TEXT_LEN : B.SOFF_TEXT_LEN + 4] = (seed % 300).to_bytes(4, "little")
    data = read_worker_data(page_reader(page))
    assert data is not None
    if data.text is not None:
        assert len(data.text.encode()) <= 3 * B.TEXT_SIZE and data.text.isprintable()
    assert len(data.metrics) + data.bad_slots <= B.METRIC_COUNT
    for m in data.metrics:
        assert B.metric_name_ok(m.name) and m.kind in ("counter", "gauge")
        assert -(1 << 63) <= m.value < (1 << 64)


def test_hostile_names_kinds_and_duplicates_are_left_out() -> None:
    page = bytearray(B.STATUS_SIZE)

    def slot(i: int, kind: int, name: bytes, value: int) -> None:
        off = B.SOFF_METRICS + i * B.METRIC_SIZE
        page[off : off + B.METRIC_NAME_SIZE] = name.ljust(B.METRIC_NAME_SIZE, b"\0")
        page[off + B.METRIC_NAME_SIZE : off + B.METRIC_SIZE] = value.to_bytes(8, "little")
        page[B.SOFF_METRIC_KINDS + i] = kind

    slot(0, B.METRIC_COUNTER, b"ok", 1)
    slot(1, B.METRIC_COUNTER, b"\x1b[31mred", 2)    # an escape sequence
    slot(2, B.METRIC_GAUGE, b"ab\0cd", 3)          # not NUL-padded: bytes after the NUL
    slot(3, 7, b"kind7", 4)                        # unknown kind
    slot(4, B.METRIC_GAUGE, b"ok", 5)              # a duplicate name
    slot(5, B.METRIC_GAUGE, b"x" * 24, (1 << 64) - 1)  # full width, no NUL; gauge: -1
    slot(6, B.METRIC_COUNTER, "é".encode(), 6)
    slot(7, B.METRIC_FREE, b"ignored", 7)          # free: not even counted
    got = read_metrics(page_reader(page))
    assert got == ((MetricValue("ok", "counter", 1), MetricValue("x" * 24, "gauge", -1)), 5)


def test_text_is_cleaned_of_controls_and_bad_utf8() -> None:
    assert clean_text(b"ok \xe2\x82\xac") == "ok €"
    hostile = b"\x1b]0;owned\x07 \xff x" + "\u202e".encode()  # OSC title, bad byte, RLO
    assert clean_text(hostile) == "\ufffd]0;owned\ufffd \ufffd x\ufffd"


def test_a_seqlock_write_that_never_ends_is_given_up_quickly() -> None:
    page = bytearray(B.STATUS_SIZE)
    page[B.SOFF_TEXT_SEQ] = 3  # odd forever: a writer stopped (or died) mid-write
    page[B.SOFF_TEXT_LEN] = 5
    page[B.SOFF_TEXT : B.SOFF_TEXT + 5] = b"stale"
    calls = 0
    inner = page_reader(page)

    def counting(size: int, off: int) -> bytes:
        nonlocal calls
        calls += 1
        return inner(size, off)

    assert read_text(counting) is None
    assert calls == TEXT_TRIES


def test_a_length_past_the_text_area_is_refused() -> None:
    page = bytearray(B.STATUS_SIZE)
    page[B.SOFF_TEXT_LEN : B.SOFF_TEXT_LEN + 4] = (B.TEXT_SIZE + 1).to_bytes(4, "little")
    page[B.SOFF_TEXT : B.SOFF_TEXT + 10] = b"x" * 10
    assert read_text(page_reader(page)) is None


@pytest.mark.parametrize("how", ["raises", "short", "empty"])
def test_an_unreadable_page_reads_as_unknown(how: str) -> None:
    def read(size: int, off: int) -> bytes:
        if how == "raises":
            raise OSError(9, "Bad file descriptor")
        return b"\1" * (size // 2) if how == "short" else b""

    assert read_worker_data(read) is None
    assert read_text(read) is None


def test_a_truncated_status_page_reads_as_unknown(block: ControlBlock) -> None:
    path = "/dev/shm" + block.status_name
    with Worker(name=block.name) as w:
        w.status("hello")
        w.counter("jobs").inc()
        try:
            os.truncate(path, 0x300)  # cuts the metric slots
            assert block.worker_data() is None
            os.truncate(path, 0)
            assert block.worker_data() is None
        finally:
            os.truncate(path, B.STATUS_SIZE)  # whole again before this process touches it


WRITER = """
import sys
from worker import Worker
w = Worker(name=sys.argv[1])
c = w.counter("jobs")
texts = [f"phase {i} " + "x" * (i * 37 % 200) for i in range(50)]
print("go", flush=True)
i = 0
while not w.should_stop:
    w.status(texts[i % 50]); c.inc(); i += 1
w.close()
"""


def test_reads_during_a_busy_writer_are_never_torn(block: ControlBlock, procs: Spawn) -> None:
    """A real worker process rewrites its text as fast as it can; every text the daemon reads
    is one the worker wrote whole (or None: the seqlock did not settle), and the counter only
    goes up."""
    kid = procs([sys.executable, "-c", textwrap.dedent(WRITER), block.name], env=python_env())
    assert kid.stdout is not None
    Lines(kid.stdout).expect("go", timeout=30)
    texts = {f"phase {i} " + "x" * (i * 37 % 200) for i in range(50)}
    seen_text = last = 0
    try:
        for _ in range(3000):
            data = block.worker_data()
            assert data is not None
            if data.text is not None:
                assert data.text in texts, data.text
                seen_text += 1
            (jobs,) = data.metrics
            assert jobs.value >= last
            last = jobs.value
    finally:
        block.post_command(B.CMD_STOP_GRACEFUL)
    assert kid.wait(30) == 0, kid.stderr.read() if kid.stderr else ""
    assert seen_text > 0 and last > 0
