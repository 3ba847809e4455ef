"""End to end: `python -m worker` and Worker in real child processes, driven by a block."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.child import Lines, Spawn, python_env
from tests.support.wait import wait_until
from worker import block as B
from worker.ctlpage import ControlBlock


@pytest.fixture
def notify_sock(tmp_path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify.sock"))
    s.settimeout(10)
    yield s
    s.close()


def start_demo(
    procs: Spawn, blk: ControlBlock, notify: socket.socket | None = None, *args: str
) -> tuple[subprocess.Popen[str], Lines]:
    env = python_env(PYVISOR_BLOCK=blk.name, PYVISOR_INSTANCE="demo:0")
    if notify is not None:
        env["PYVISOR_NOTIFY"] = notify.getsockname()
    p = procs([sys.executable, "-m", "worker", "--unit-ms", "20", *args], env=env)
    blk.set_spawned(p.pid, 0, 1)
    return p, Lines(p.stdout)


def ack_state(blk: ControlBlock) -> int:
    return blk.ack[1]


def test_demo_worker_ready_then_graceful_stop_at_a_unit_boundary(
    block: ControlBlock, procs: Spawn, notify_sock: socket.socket
) -> None:
    p, out = start_demo(procs, block, notify_sock)
    assert notify_sock.recv(64) == b"READY"
    wait_until(lambda: ack_state(block), 10, "READY", ok=lambda s: s in (B.ST_READY, B.ST_BUSY))
    assert block.pid == p.pid
    assert block.start_ticks == B.proc_start_ticks(p.pid)
    wait_until(lambda: block.work_done, 10, "3 units of work", ok=lambda n: n >= 3)
    assert block.heartbeat_ns > 0
    seq = block.post_command(B.CMD_STOP_GRACEFUL, time.monotonic_ns() + 10**10)
    line = out.expect("STOP_GRACEFUL received")
    assert p.wait(10) == 0, out.rest()
    lines = out.rest()
    units = int(line.split("after ")[1].split()[0])
    assert f"worker: unit {units} done" in lines, lines
    assert f"worker: unit {units + 1} done" not in lines, lines
    assert block.work_done == units, "every unit begun was finished and counted"
    assert lines[-1] == "worker: exiting 0", lines
    assert block.ack == (seq, B.ST_EXITED)
    rec = block.read_exit()
    assert rec is not None and (rec.status, rec.source) == (0, B.EXIT_SRC_WORKER), rec
    assert block.busy_since_ns == 0


def test_demo_worker_exits_cleanly_on_sigterm(block: ControlBlock, procs: Spawn) -> None:
    p, out = start_demo(procs, block)
    out.expect("worker: ready")
    out.expect("unit 1 done")
    p.send_signal(signal.SIGTERM)
    out.expect("SIGTERM: stopping at a unit boundary")
    assert p.wait(10) == 0, out.rest()
    assert block.ack[1] == B.ST_EXITED
    rec = block.read_exit()
    assert rec is not None and rec.status == 0, rec


def test_demo_worker_records_an_exception(block: ControlBlock, procs: Spawn) -> None:
    p, out = start_demo(procs, block, None, "--units", "2", "--fail")
    out.expect("finished 2 units")
    assert p.wait(10) == 1
    err = p.stderr.read() if p.stderr else ""
    assert "RuntimeError: --fail given" in err, err
    rec = block.read_exit()
    assert rec is not None and (rec.status, rec.source) == (1, B.EXIT_SRC_WORKER), rec
    assert block.ack[1] == B.ST_EXITED and block.work_done == 2


def test_demo_worker_without_a_block_explains(procs: Spawn) -> None:
    p = procs([sys.executable, "-m", "worker"], env=python_env())
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert "$PYVISOR_BLOCK is not set" in err and "Worker(name=" in err, err


def test_demo_worker_attaches_by_name(block: ControlBlock, procs: Spawn) -> None:
    p = procs(
        [sys.executable, "-m", "worker", "--name", block.name, "--units", "1"], env=python_env()
    )
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert f"attached to {block.name} as " in out, out
    assert block.read_exit() is not None


def test_wait_for_stop_in_a_child_is_woken_by_the_daemon_side(
    block: ControlBlock, procs: Spawn
) -> None:
    code = textwrap.dedent(
        """
        import time
        from worker import Worker
        with Worker() as w:
            w.ready()
            t0 = time.monotonic()
            r = w.wait_for_stop()
            print("stopped", r, w.stop_command, round(time.monotonic() - t0, 3), flush=True)
        """
    )
    env = python_env(PYVISOR_BLOCK=block.name, PYVISOR_INSTANCE="w:0")
    p = procs([sys.executable, "-c", code], env=env)
    out = Lines(p.stdout)
    wait_until(lambda: ack_state(block), 10, "READY", ok=lambda s: s == B.ST_READY)
    seq = block.post_command(B.CMD_STOP_GRACEFUL)
    t0 = time.monotonic()
    wait_until(lambda: block.ack, 10, "the stop ack",
               ok=lambda a: a == (seq, B.ST_STOPPING) or a[1] == B.ST_EXITED)
    assert time.monotonic() - t0 < 5
    line = out.expect("stopped")
    assert line.split()[1:3] == ["True", str(B.CMD_STOP_GRACEFUL)], line
    assert p.wait(10) == 0
    assert block.ack == (seq, B.ST_EXITED)
