"""worker._ctlword across real processes: atomicity, futex wake-ups, signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

from tests.support.child import Lines, python_env
from tests.support.wait import wait_until
from worker.block import HEADER_SIZE, OFF_CMD
from worker.ctlpage import ControlBlock

OFF_APP = HEADER_SIZE  # scratch: the ctl page past its header is unused

# A child that maps a block by name (raw, no validation) and runs BODY with `v` a View.
CHILD = """
import mmap, os, sys, time, posix_ipc
from worker._ctlword import View
shm = posix_ipc.SharedMemory(sys.argv[1])
mm = mmap.mmap(shm.fd, 4096); shm.close_fd()
v = View(mm)
{body}
"""


def run_child(
    procs: Callable[..., subprocess.Popen[str]], name: str, body: str
) -> subprocess.Popen[str]:
    code = CHILD.format(body=textwrap.dedent(body))
    return procs([sys.executable, "-c", code, name], env=python_env())


def test_two_processes_fetch_add_a_million_each(
    block: ControlBlock, procs: Callable[..., subprocess.Popen[str]]
) -> None:
    n = 1_000_000
    body = f"""
    print("go", flush=True)
    while v.load_u32({OFF_APP + 16}) == 0:
        pass
    add64 = v.fetch_add_u64
    for _ in range({n}):
        add64({OFF_APP}, 1)
    print("done", flush=True)
    """
    kids = [run_child(procs, block.name, body) for _ in range(2)]
    lines = [Lines(k.stdout) for k in kids]
    for ln in lines:
        ln.expect("go")
    block.view.store_u32(OFF_APP + 16, 1)  # start both at once
    for k, ln in zip(kids, lines, strict=True):
        ln.expect("done", timeout=60)
        assert k.wait(10) == 0, k.stderr.read() if k.stderr else ""
    assert block.view.load_u64(OFF_APP) == 2 * n


def test_wait_in_one_process_woken_by_store_and_wake_from_another(
    block: ControlBlock, procs: Callable[..., subprocess.Popen[str]]
) -> None:
    body = f"""
    print("waiting", v.waiters, flush=True)
    t0 = time.monotonic()
    r = v.wait_u32({OFF_CMD}, 0, 30)
    print("woke", r, hex(v.load_u32({OFF_CMD})), round(time.monotonic() - t0, 3), flush=True)
    """
    kid = run_child(procs, block.name, body)
    out = Lines(kid.stdout)
    out.expect("waiting")
    t0 = time.monotonic()
    block.view.store_u32_seq_cst(OFF_CMD, 0x101)
    block.view.wake(OFF_CMD)
    line = out.expect("woke")
    assert time.monotonic() - t0 < 5, f"wake took too long: {line}"
    assert line.split()[1:3] == ["True", "0x101"], line
    assert kid.wait(10) == 0


def test_timed_wait_in_a_child_returns_false(
    block: ControlBlock, procs: Callable[..., subprocess.Popen[str]]
) -> None:
    body = f"""
    t0 = time.monotonic()
    r = v.wait_u32({OFF_CMD}, 0, 0.25)
    print("result", r, time.monotonic() - t0, flush=True)
    """
    kid = run_child(procs, block.name, body)
    line = Lines(kid.stdout).expect("result")
    _, r, took = line.split()
    assert r == "False" and 0.25 <= float(took) < 2.0, line


def in_futex_wait(pid: int) -> None:
    """Wait (bounded) until the process's main thread sleeps in a futex wait."""

    def wchan() -> str:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read()

    wait_until(wchan, 10, f"pid {pid} to sleep in a futex wait", ok=lambda w: "futex" in w)


def _interrupt_child(
    procs: Callable[..., subprocess.Popen[str]], block: ControlBlock, setup: str, sig: int
) -> list[str]:
    body = f"""
    {setup}
    t0 = time.monotonic()
    try:
        print("waiting", flush=True)
        v.wait_u32({OFF_CMD}, 0)
        print("returned", flush=True)
    except BaseException as e:
        print("raised", type(e).__name__, round(time.monotonic() - t0, 3), flush=True)
    """
    kid = run_child(procs, block.name, body)
    out = Lines(kid.stdout)
    out.expect("waiting")
    in_futex_wait(kid.pid)
    t0 = time.monotonic()
    kid.send_signal(sig)
    line = out.expect("raised", timeout=5)
    assert time.monotonic() - t0 < 2, f"the signal took too long to interrupt: {line}"
    assert kid.wait(10) == 0
    return line.split()


def test_sigint_interrupts_an_untimed_wait_with_keyboardinterrupt(
    block: ControlBlock, procs: Callable[..., subprocess.Popen[str]]
) -> None:
    words = _interrupt_child(procs, block, "pass", signal.SIGINT)
    assert words[1] == "KeyboardInterrupt", words
    assert float(words[2]) < 1.0, words


def test_sigterm_handler_runs_even_with_sa_restart(
    block: ControlBlock, procs: Callable[..., subprocess.Popen[str]]
) -> None:
    # signal.siginterrupt(sig, False) sets SA_RESTART: the futex wait is not interrupted,
    # and only the finite wait slices let the handler run.
    setup = """
    import signal
    def on_term(signum, frame):
        raise SystemExit("term")
    signal.signal(signal.SIGTERM, on_term)
    signal.siginterrupt(signal.SIGTERM, False)
    """
    words = _interrupt_child(procs, block, setup, signal.SIGTERM)
    assert words[1] == "SystemExit", words
    assert float(words[2]) < 1.0, words
