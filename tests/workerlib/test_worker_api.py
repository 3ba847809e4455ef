"""worker.api.Worker in this process: attach, states, commands, waits, exit record."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from worker import Worker, WorkerError
from worker import block as B
from worker.ctlpage import ControlBlock


@pytest.fixture
def env_block(block: ControlBlock, monkeypatch: pytest.MonkeyPatch) -> ControlBlock:
    monkeypatch.setenv("PYVISOR_BLOCK", block.name)
    monkeypatch.setenv("PYVISOR_INSTANCE", "web:0")
    monkeypatch.delenv("PYVISOR_NOTIFY", raising=False)
    return block


def test_missing_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYVISOR_BLOCK", raising=False)
    with pytest.raises(WorkerError, match=r"\$PYVISOR_BLOCK is not set.*Worker\(name="):
        Worker()


def test_attach_from_env_publishes_pid_start_and_starting(env_block: ControlBlock) -> None:
    with Worker() as w:
        assert (w.name, w.instance) == (env_block.name, "web:0")
        assert env_block.pid == os.getpid()
        assert env_block.start_ticks == B.proc_start_ticks(os.getpid())
        assert env_block.ack == (0, B.ST_STARTING) and w.state == B.ST_STARTING
        assert not w.should_stop and w.stop_command == B.CMD_NONE
        assert w.stop_deadline_ns is None and w.stop_time_left() is None


def test_attach_by_name_and_by_prefix(block: ControlBlock) -> None:
    prefix, _, instance = block.name[1:].partition(".")
    with Worker(name=block.name[1:]) as w:  # the leading "/" is optional
        assert w.name == block.name and w.instance == instance
    with Worker(prefix=prefix, instance=instance) as w:
        assert w.name == block.name
    with pytest.raises(WorkerError, match="instance"):
        Worker(prefix=prefix)


def test_ready_sets_state_and_sends_the_datagram(
    env_block: ControlBlock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(10)
        monkeypatch.setenv("PYVISOR_NOTIFY", path)
        with Worker() as w:
            w.ready()
            assert env_block.ack == (0, B.ST_READY)
            assert s.recv(64) == b"READY"


def test_ready_ignores_a_missing_or_bad_notify_socket(
    env_block: ControlBlock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in (str(tmp_path / "nobody-listens"), "@pyvisor-test-none", "/" + "x" * 200):
        monkeypatch.setenv("PYVISOR_NOTIFY", bad)
        with Worker() as w:
            w.ready()
            assert env_block.ack[1] == B.ST_READY


def test_stop_is_seen_acked_and_latched(env_block: ControlBlock) -> None:
    with Worker() as w:
        w.ready()
        deadline = time.monotonic_ns() + 5 * 10**9
        seq = env_block.post_command(B.CMD_STOP_GRACEFUL, deadline)
        assert w.should_stop is True
        assert env_block.ack == (seq, B.ST_STOPPING)
        assert w.stop_command == B.CMD_STOP_GRACEFUL
        assert w.stop_deadline_ns == deadline
        left = w.stop_time_left()
        assert left is not None and 0 < left <= 5
        seq2 = env_block.post_command(B.CMD_NONE)  # a later non-stop command is acked too
        assert w.should_stop is True and env_block.ack == (seq2, B.ST_STOPPING)
        w.ready()  # a stop once seen is never undone
        assert env_block.ack[1] == B.ST_STOPPING
        seq3 = env_block.post_command(B.CMD_STOP_GRACEFUL)
        assert w.should_stop and env_block.ack == (seq3, B.ST_STOPPING)


def test_non_stop_command_is_acked_without_stopping(env_block: ControlBlock) -> None:
    with Worker() as w:
        w.ready()
        seq = env_block.post_command(B.CMD_NONE)
        assert w.should_stop is False
        assert env_block.ack == (seq, B.ST_READY)


def test_stop_posted_before_attach_is_seen_first_poll(env_block: ControlBlock) -> None:
    seq = env_block.post_command(B.CMD_STOP_GRACEFUL)
    with Worker() as w:
        assert w.should_stop and w.stop_command == B.CMD_STOP_GRACEFUL
        assert env_block.ack == (seq, B.ST_STOPPING)


def test_busy_heartbeat_and_work(env_block: ControlBlock) -> None:
    with Worker() as w:
        w.ready()
        with w.busy():
            assert env_block.ack[1] == B.ST_BUSY and env_block.busy_since_ns > 0
        assert env_block.ack[1] == B.ST_READY and env_block.busy_since_ns == 0
        t0 = time.monotonic_ns()
        w.heartbeat()
        assert t0 <= env_block.heartbeat_ns <= time.monotonic_ns()
        w.add_work()
        w.add_work(41)
        assert env_block.work_done == 42 == w.work_done


def test_wait_for_stop_times_out_and_is_woken(env_block: ControlBlock) -> None:
    with Worker() as w:
        t0 = time.monotonic()
        assert w.wait_for_stop(0.1) is False
        assert 0.1 <= time.monotonic() - t0 < 2
        timer = threading.Timer(0.05, env_block.post_command, (B.CMD_NONE,))
        timer.start()  # a non-stop command wakes the waiter, which goes back to sleep
        assert w.wait_for_stop(0.3) is False
        timer.join()
        timer = threading.Timer(0.05, env_block.post_command, (B.CMD_STOP_GRACEFUL,))
        timer.start()
        t0 = time.monotonic()
        assert w.wait_for_stop(30) is True
        assert time.monotonic() - t0 < 5
        timer.join()
        assert w.wait_for_stop(0) is True


def test_wait_for_stop_async(env_block: ControlBlock) -> None:
    async def scenario(w: Worker) -> None:
        assert await w.wait_for_stop_async(0.05) is False
        task = asyncio.create_task(w.wait_for_stop_async())
        await asyncio.sleep(0.05)  # the loop stays responsive while the task waits
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, env_block.post_command, B.CMD_STOP_GRACEFUL)
        t0 = time.monotonic()
        assert await w.wait_for_stop_async(30) is True
        assert time.monotonic() - t0 < 5

    with Worker() as w:
        asyncio.run(scenario(w))
    assert env_block.ack[1] == B.ST_EXITED  # close() waited for the cancelled slice


def test_close_records_the_exit(env_block: ControlBlock) -> None:
    w = Worker()
    w.ready()
    before = time.time_ns()
    w.close(status=3)
    w.close(status=4)  # idempotent: the first record stays
    rec = env_block.read_exit()
    assert rec is not None and (rec.status, rec.source) == (3, B.EXIT_SRC_WORKER), rec
    assert before <= rec.time_ns <= time.time_ns()
    assert env_block.ack == (0, B.ST_EXITED) and w.closed
    with pytest.raises(ValueError, match="closed"):
        w.should_stop  # noqa: B018


@pytest.mark.parametrize(
    ("exc", "status"),
    [(RuntimeError("boom"), 1), (SystemExit(5), 5), (SystemExit(None), 0),
     (SystemExit("msg"), 1), (KeyboardInterrupt(), -2)],
)  # fmt: skip
def test_exit_status_from_the_with_block(
    env_block: ControlBlock, exc: BaseException, status: int
) -> None:
    with pytest.raises(type(exc)), Worker():
        raise exc
    rec = env_block.read_exit()
    assert rec is not None and rec.status == status, rec


def test_attach_refuses_a_bad_block(new_block: Callable[..., ControlBlock]) -> None:
    blk = new_block()
    blk.view.store_u32(B.OFF_VERSION, 9)
    with pytest.raises(B.BlockError, match="layout version"):
        Worker(name=blk.name)
