"""worker._ctlword.View in one process: semantics and every error case."""

from __future__ import annotations

import mmap
import threading
import time

import pytest

from tests.support.wait import wait_until
from worker._ctlword import WAIT_SLICE_NS, View


@pytest.fixture
def mm() -> mmap.mmap:
    return mmap.mmap(-1, 4096)


def test_loads_stores_and_rmw(mm: mmap.mmap) -> None:
    with View(mm) as v:
        v.store_u32(0x40, 0xDEADBEEF)
        v.store_u64(0x48, 2**64 - 1)
        assert v.load_u32(0x40) == 0xDEADBEEF
        assert v.load_u64(0x48) == 2**64 - 1
        assert mm[0x40:0x44] == (0xDEADBEEF).to_bytes(4, "little")
        v.store_u32_seq_cst(0x40, 7)
        assert v.load_u32(0x40) == 7
        assert v.exchange_u32(0x40, 8) == 7 and v.load_u32(0x40) == 8
        assert v.fetch_add_u64(0x60, 2**64 - 1) == 0
        assert v.fetch_add_u64(0x60, 1) == 2**64 - 1 and v.load_u64(0x60) == 0
        assert v.nbytes == 4096 and not v.readonly and not v.closed


def test_type_error_without_buffer_protocol() -> None:
    with pytest.raises(TypeError, match="buffer protocol"):
        View(12)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="buffer protocol"):
        View("a str")  # type: ignore[arg-type]


def test_readonly_buffer_loads_but_refuses_writes() -> None:
    v = View(bytes(64))
    assert v.readonly
    assert v.load_u32(0) == 0 and v.load_u64(8) == 0
    assert v.wait_u32(0, 1, 0) is True  # differs: no sleep
    assert v.wake(0) == 0
    for call in (
        lambda: v.store_u32(0, 1),
        lambda: v.store_u64(0, 1),
        lambda: v.store_u32_seq_cst(0, 1),
        lambda: v.exchange_u32(0, 1),
        lambda: v.fetch_add_u64(0, 1),
    ):
        with pytest.raises(TypeError, match="read-only"):
            call()


def test_offsets_out_of_range(mm: mmap.mmap) -> None:
    v = View(mm)
    for off in (-4, 4096, 4093, 10**30):
        with pytest.raises(IndexError):
            v.load_u32(off)
    with pytest.raises(IndexError, match="out of range"):
        v.load_u64(4092)  # aligned for 4 but 8 bytes do not fit
    with pytest.raises(IndexError):
        v.store_u64(4096, 1)
    with pytest.raises(IndexError):
        v.wait_u32(4096, 0, 0)
    with pytest.raises(IndexError):
        v.wake(-1)
    with pytest.raises(TypeError):
        v.load_u32(1.0)  # type: ignore[arg-type]
    v.load_u64(4088)  # the last slot is fine


def test_misalignment_is_checked_on_the_absolute_address(mm: mmap.mmap) -> None:
    v = View(mm)
    with pytest.raises(ValueError, match="misaligned"):
        v.load_u32(2)
    with pytest.raises(ValueError, match="misaligned"):
        v.store_u64(4, 1)
    # A buffer that starts 1 byte into the page: offset 3 is aligned, offset 0 is not.
    shifted = View(memoryview(mm)[1:])
    with pytest.raises(ValueError, match="misaligned"):
        shifted.load_u32(0)
    shifted.store_u32(3, 0xABCD)
    assert int.from_bytes(mm[4:8], "little") == 0xABCD
    with pytest.raises(ValueError, match="misaligned"):
        shifted.wait_u32(0, 0, 0)
    shifted.close()


def test_values_out_of_range(mm: mmap.mmap) -> None:
    v = View(mm)
    for bad in (2**32, -1):
        with pytest.raises(OverflowError):
            v.store_u32(0, bad)
        with pytest.raises(OverflowError):
            v.exchange_u32(0, bad)
        with pytest.raises(OverflowError):
            v.wait_u32(0, bad, 0)
    for bad in (2**64, -1):
        with pytest.raises(OverflowError):
            v.store_u64(0, bad)
        with pytest.raises(OverflowError):
            v.fetch_add_u64(0, bad)
    with pytest.raises(TypeError):
        v.store_u32(0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        v.wait_u32(0, 1, -1)
    with pytest.raises(ValueError):
        v.wait_u32(0, 1, float("nan"))
    with pytest.raises(ValueError):
        v.wake(0, -1)
    assert v.load_u64(0) == 0, "a refused write must not change the word"


def test_closed_view_raises_value_error(mm: mmap.mmap) -> None:
    v = View(mm)
    with pytest.raises(BufferError):
        mm.close()  # the view holds the buffer: the mmap cannot go away under it
    v.close()
    v.close()  # idempotent
    assert v.closed and v.nbytes == 0
    for call in (lambda: v.load_u32(0), lambda: v.store_u64(0, 1), lambda: v.wake(0)):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError, match="closed"):
        v.__enter__()
    mm.close()  # released now


def test_close_refused_while_a_wait_is_in_flight(mm: mmap.mmap) -> None:
    v = View(mm)
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(v.wait_u32(0, 0, 30)))
    t.start()
    wait_until(lambda: v.waiters, 10, "the waiter thread to start waiting", interval=0.001)
    assert v.waiters == 1, "the waiter thread never started waiting"
    with pytest.raises(BufferError, match="in flight"):
        v.close()
    with pytest.raises(BufferError):
        v.__exit__(None, None, None)  # leaving a with block closes: refused too
    v.store_u32(0, 1)
    v.wake(0)
    t.join(10)
    assert result == [True]
    v.close()


def test_wait_returns_at_once_when_the_value_differs(mm: mmap.mmap) -> None:
    v = View(mm)
    v.store_u32(0, 5)
    t0 = time.monotonic()
    assert v.wait_u32(0, 4) is True
    assert v.wait_u32(0, 4, 0) is True
    assert time.monotonic() - t0 < 0.5


def test_timed_wait_returns_false_on_time(mm: mmap.mmap) -> None:
    v = View(mm)
    for timeout in (0.0, 0.02, 0.6, 0.12):  # 0.6 spans several 250 ms slices
        t0 = time.monotonic()
        assert v.wait_u32(0, 0, timeout) is False
        took = time.monotonic() - t0
        assert timeout <= took < timeout + 0.5, f"timeout {timeout} took {took:.3f} s"
    assert WAIT_SLICE_NS == 250_000_000


def test_wait_ignores_a_wake_without_a_change(mm: mmap.mmap) -> None:
    v = View(mm)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(v.wait_u32(0, 0, 0.5)))
    t.start()
    wait_until(lambda: v.waiters, 5, "the waiter thread to start waiting", interval=0.001)
    v.wake(0)  # spurious for the waiter: the word still holds 0
    t.join(10)
    assert got == [False]


def test_wait_woken_by_another_thread(mm: mmap.mmap) -> None:
    v = View(mm)
    got: list[tuple[bool, float]] = []

    def waiter() -> None:
        t0 = time.monotonic()
        got.append((v.wait_u32(0x40, 0, 30), time.monotonic() - t0))

    t = threading.Thread(target=waiter)
    t.start()
    wait_until(lambda: v.waiters, 5, "the waiter thread to start waiting", interval=0.001)
    v.store_u32(0x40, 1)
    woken = v.wake(0x40)
    t.join(10)
    assert got and got[0][0] is True and got[0][1] < 5, got
    assert woken in (0, 1)
