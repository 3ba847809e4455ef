"""Benchmarks of the worker library: prints figures, is not a pass/fail test.

    .venv/bin/python bench/bench_worker.py              # ~40 s
    .venv/bin/python bench/bench_worker.py --rounds 2000 --idle 30   # longer, steadier

1. ns per should_stop poll, beside a raw View.load_u32, struct.unpack_from on the mmap
   (no atomicity) and bare C calls (View.nop(), len(()) ).      target: poll <= 25 ns
2. Cross-process wake latency of Worker.wait_for_stop (waiter pinned to another vCPU, then
   to the same one), beside a 1 ms sleep-poll loop.            target: p50 <= 100 us, p99 <= 1 ms
3. CPU and wake-ups of an idle worker in wait_for_stop, beside the 1 ms sleep-poll loop
   (/proc/PID/stat utime+stime, /proc/PID/schedstat, voluntary_ctxt_switches).
                                                                target: <= 0.1 % of a core
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import struct
import subprocess
import sys
import time
import timeit
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker import Worker
from worker import block as B
from worker._ctlword import View
from worker.api import attach_pages
from worker.ctlpage import ControlBlock

PREFIX = "pvbench" + uuid.uuid4().hex[:8]
# scratch in the status page (the bench plays the worker's side too, so it maps it)
OFF_T0 = B.SOFF_APP  # u64: the poster's CLOCK_MONOTONIC ns just before posting
OFF_LAT = B.SOFF_APP + 8  # u64: latency measured by the waiter (ns)
_MAPS: list[object] = []


def status_view(blk: ControlBlock) -> View:
    """The status page mapped read-write, as its worker sees it (the daemon never does)."""
    ctl, status, _name = attach_pages(blk.name)
    _MAPS.extend((ctl, status))
    return View(status)


def new_block(tag: str) -> ControlBlock:
    name = f"/{PREFIX}-{uuid.uuid4().hex[:6]}.{tag}:0"
    return ControlBlock.create(name, slot=0, supervisor_pid=os.getpid(), epoch=1)


# -- 1. poll cost ------------------------------------------------------------------------


def bench_poll(number: int) -> None:
    blk = new_block("poll")
    try:
        w = Worker(name=blk.name)
        v = blk.view
        s = struct.Struct("<I")
        mm = blk._mm
        env = {"w": w, "v": v, "unpack": s.unpack_from, "mm": mm, "t": (1, 2), "len": len}

        def ns(stmt: str) -> float:
            t = timeit.Timer(stmt, globals=env)
            return min(t.repeat(repeat=7, number=number)) / number * 1e9

        empty = ns("pass")
        rows = [
            ("w.should_stop  (Worker poll)", ns("w.should_stop")),
            ("v.load_u32(0x40)  (raw atomic)", ns("v.load_u32(64)")),
            ("unpack_from(mm, 0x40)  (struct)", ns("unpack(mm, 64)")),
            ("v.nop()  (bare C method call)", ns("v.nop()")),
            ("len(t)  (bare C builtin call)", ns("len(t)")),
        ]
        print(f"\n1. poll cost, ns per call (min of 7 x {number:,}; loop overhead "
              f"{empty:.1f} ns subtracted)")  # fmt: skip
        for label, t in rows:
            print(f"   {label:36s} {t - empty:6.1f} ns   (raw {t:5.1f})")
        w.close()
    finally:
        blk.unlink()
        blk.close()


# -- 2. wake latency -----------------------------------------------------------------------

WAITER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from worker import Worker
from worker.ctlpage import ControlBlock
mode, names = sys.argv[2], sys.argv[3:]
cpu = int(os.environ.get("BENCH_CPU", "-1"))
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
for name in names:
    w = Worker(name=name)
    v = w._view  # its status page
    w.ready()
    if mode == "futex":
        w.wait_for_stop()
    else:  # 1 ms sleep-poll
        while not w.should_stop:
            time.sleep(0.001)
    now = time.monotonic_ns()
    v.store_u64(%(lat)d, now - v.load_u64(%(t0)d))
    w.close()
"""


def wake_round_trip(mode: str, rounds: int, waiter_cpu: int, poster_cpu: int) -> list[float]:
    blocks = [new_block(f"wake{i}") for i in range(rounds)]
    code = WAITER % {"lat": OFF_LAT, "t0": OFF_T0}
    old_aff = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {poster_cpu})
    env = dict(os.environ, BENCH_CPU=str(waiter_cpu))
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(ROOT), mode, *(b.name for b in blocks)], env=env
    )
    lat: list[float] = []
    try:
        for blk in blocks:
            v = status_view(blk)
            # wait for READY on the ack word (futex), then let the waiter fall asleep
            while blk.ack[1] != B.ST_READY:
                v.wait_u32(B.SOFF_ACK, v.load_u32(B.SOFF_ACK), 5.0)
                if p.poll() is not None:
                    raise RuntimeError(f"waiter died: rc={p.returncode}")
            time.sleep(random.uniform(0.002, 0.004))
            v.store_u64(OFF_T0, time.monotonic_ns())
            blk.post_command(B.CMD_STOP_GRACEFUL)
            while blk.ack[1] != B.ST_EXITED:
                v.wait_u32(B.SOFF_ACK, v.load_u32(B.SOFF_ACK), 5.0)
            lat.append(v.load_u64(OFF_LAT) / 1000.0)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.sched_setaffinity(0, old_aff)
        for blk in blocks:
            blk.unlink()
            blk.close()
    return lat


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_wake(rounds: int) -> None:
    ncpu = len(os.sched_getaffinity(0))
    cpus = sorted(os.sched_getaffinity(0))
    other = cpus[1] if ncpu > 1 else cpus[0]
    print(f"\n2. cross-process wake latency, post_command -> waiter running ({rounds} rounds)")
    cases = [("wait_for_stop (futex), other vCPU", "futex", other, cpus[0])]
    cases.append(("wait_for_stop (futex), same vCPU", "futex", cpus[0], cpus[0]))
    cases.append(("1 ms sleep-poll loop, other vCPU", "poll", other, cpus[0]))
    if ncpu == 1:
        print("   (only one vCPU available: 'other vCPU' rows ran on the same one)")
    for label, mode, wcpu, pcpu in cases:
        lat = wake_round_trip(mode, rounds, wcpu, pcpu)
        print(f"   {label:36s} p50 {pct(lat, 0.5):8.1f} us   p99 {pct(lat, 0.99):8.1f} us"
              f"   mean {statistics.fmean(lat):8.1f} us   max {max(lat):8.1f} us")  # fmt: skip


# -- 3. idle cost ---------------------------------------------------------------------------

IDLER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from worker import Worker
w = Worker(name=sys.argv[3])
w.ready()
if sys.argv[2] == "futex":
    w.wait_for_stop()
else:  # sleep-poll every N ms
    nap = float(sys.argv[2]) / 1000
    while not w.should_stop:
        time.sleep(nap)
w.close()
"""


def proc_cpu(pid: int) -> tuple[float, float, int]:
    """(utime+stime seconds, on-CPU seconds from schedstat, voluntary switches)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[14 - 3]) + int(fields[15 - 3])
    with open(f"/proc/{pid}/schedstat") as f:
        oncpu = int(f.read().split()[0]) / 1e9
    vol = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                vol = int(line.split()[1])
    return ticks / os.sysconf("SC_CLK_TCK"), oncpu, vol


def bench_idle(seconds: float) -> None:
    print(f"\n3. idle workers waiting for a stop, all side by side over the same {seconds:g} s")
    cases = (
        ("wait_for_stop (futex)", "futex"),
        ("1 ms sleep-poll loop", "1"),
        ("100 ms sleep-poll (wake-rate baseline)", "100"),
    )
    blocks = [new_block("idle") for _ in cases]
    kids: list[subprocess.Popen[bytes]] = []
    try:
        for (_, mode), blk in zip(cases, blocks, strict=True):
            kids.append(subprocess.Popen([sys.executable, "-c", IDLER, str(ROOT), mode, blk.name]))
        for blk in blocks:
            sv = status_view(blk)
            while blk.ack[1] != B.ST_READY:
                sv.wait_u32(B.SOFF_ACK, sv.load_u32(B.SOFF_ACK), 5.0)
        time.sleep(0.5)  # let start-up settle
        before = [proc_cpu(p.pid) for p in kids]
        t0 = time.monotonic()
        time.sleep(seconds)
        after = [proc_cpu(p.pid) for p in kids]
        dt = time.monotonic() - t0
        for blk in blocks:
            blk.post_command(B.CMD_STOP_GRACEFUL)
        for p in kids:
            p.wait(10)
    finally:
        for p in kids:
            if p.poll() is None:
                p.kill()
                p.wait()
        for blk in blocks:
            blk.unlink()
            blk.close()
    for (label, _), (c0, s0, v0), (c1, s1, v1) in zip(cases, before, after, strict=True):
        wakes = max(v1 - v0, 1)
        print(f"   {label:40s} CPU {100 * (s1 - s0) / dt:7.4f} % of a core (schedstat), "
              f"{100 * (c1 - c0) / dt:6.3f} % (utime+stime), "
              f"{(v1 - v0) / dt:6.1f} wake-ups/s, {(s1 - s0) / wakes * 1e6:5.1f} us CPU/wake-up")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--number", type=int, default=1_000_000, help="calls per poll timing")
    ap.add_argument("--rounds", type=int, default=200, help="wake latency rounds per case")
    ap.add_argument("--idle", type=float, default=6.0, help="seconds per idle measurement")
    ap.add_argument("--only", choices=["poll", "wake", "idle"], help="run one part")
    a = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} vCPUs, kernel {os.uname().release}, "
          f"load average {os.getloadavg()[0]:.2f} (other work on the machine skews 2 and 3)")  # fmt: skip
    if a.only in (None, "poll"):
        bench_poll(a.number)
    if a.only in (None, "wake"):
        bench_wake(a.rounds)
    if a.only in (None, "idle"):
        bench_idle(a.idle)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    for path in Path("/dev/shm").glob(PREFIX + "*"):  # nothing should be left; just in case
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
