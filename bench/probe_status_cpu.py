"""The daemon's CPU per status request, by kind of request, at N plain workers (one daemon of
this tree, or of ``--base DIR`` through PYTHONPATH): where a status request's time goes
without the client's share.

    flock /tmp/pv-bench.lock .venv/bin/python bench/probe_status_cpu.py --workers 1000 \\
        [--base /tmp/status-base2] --reps 20

For each kind (text status of all, --json of all, status of one instance, a raw `pid`): the
daemon's CPU time per request (utime + stime of the whole process, its status reader threads
included, over all --reps: 10 ms ticks, so use enough reps) and the median wall time to the
end of the reply.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from harness import Pyvisor, Run, cpu_seconds, say
from mass import pyvisor_workers


def probe(d: Pyvisor, reps: int, cmd: str, targets: list[str],
          opts: dict[str, object]) -> tuple[float, float]:
    """(daemon CPU per request in ms: utime + stime of all its threads over all reps, the
    status reader threads included; median wall time in ms)."""
    wall = []
    c0 = cpu_seconds(d.pid)
    for _ in range(reps):
        t0 = time.monotonic()
        d.request(cmd, targets, opts)
        wall.append(1000 * (time.monotonic() - t0))
    return 1000 * (cpu_seconds(d.pid) - c0) / reps, statistics.median(wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--base", help="an older checkout (C modules compiled in place)")
    a = ap.parse_args()
    if a.base:
        os.environ["PYTHONPATH"] = a.base
    n = a.workers
    with open("/proc/loadavg") as f:
        say(f"== daemon CPU per status, N={n}, {'base ' + a.base if a.base else 'this tree'}"
            f" == load {f.read().split()[:3]}")
    with Run("stprobe") as run:
        d = run.pyvisor(pyvisor_workers("plain", n))
        d.start()
        d.wait_all_running(n, 300, 0.2)
        time.sleep(1)
        for label, cmd, targets, opts in (
                ("status all", "status", ["all"], {}),
                ("status --json all", "status", ["all"], {"json": True}),
                ("status plain:0", "status", ["plain:0"], {}),
                ("pid (no instance)", "pid", [], {})):
            probe(d, 2, cmd, targets, opts)        # warm
            cpu, wall = probe(d, a.reps, cmd, targets, opts)
            say(f"  {label:<18} daemon CPU {cpu:7.2f} ms ({1000 * cpu / n:5.1f} us/row)  "
                f"wall {wall:7.2f} ms")


if __name__ == "__main__":
    main()
