"""status at N plain workers, a base checkout and this tree side by side: both daemons run at
once (N workers each) and take the requests in turn (base, this, base, this, ...), so that
both see the same load of a shared machine. For each kind of request: the median wall time
and the daemon's CPU per request (utime + stime over all reps, 10 ms ticks).

    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_status_paired.py \\
        --base /tmp/status-base2 --workers 10000 --reps 10

--base: an older checkout with its C modules compiled in place (run through PYTHONPATH).
Needs 2N processes at once (check /proc/sys/kernel/pid_max).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator

from harness import Pyvisor, Run, cpu_seconds, say
from mass import pyvisor_workers

KINDS: list[tuple[str, Callable[[Pyvisor], object]]] = [
    ("raw status", lambda d: d.request("status", ["all"], {})),
    ("raw status --json", lambda d: d.request("status", ["all"], {"json": True})),
    ("CLI status (whole)", lambda d: d.ctl("status")),
    ("CLI pid (start-up)", lambda d: d.ctl("pid")),
]


@contextlib.contextmanager
def cli_of(checkout: str | None) -> Iterator[None]:
    """The CLI of the base checkout for the base daemon (PYTHONPATH while it runs), this
    tree's for this tree's: each side's whole CLI is its own client and its own daemon."""
    if checkout is None:
        yield
        return
    os.environ["PYTHONPATH"] = checkout
    try:
        yield
    finally:
        os.environ.pop("PYTHONPATH", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    n = a.workers
    with open("/proc/loadavg") as f:
        say(f"== status side by side, N={n} each, base {a.base} vs this tree, {a.reps} reps "
            f"== load {f.read().split()[:3]}")
    # two runs: each daemon its own block prefix (shm names, cgroups) and tag
    with Run("stpairb") as run_b, Run("stpairt") as run:
        os.environ["PYTHONPATH"] = a.base
        base = run_b.pyvisor(pyvisor_workers("plain", n), name="base")
        base.start()
        os.environ.pop("PYTHONPATH")
        base.wait_all_running(n, 300, 0.2)
        this = run.pyvisor(pyvisor_workers("plain", n), name="this")
        this.start()
        this.wait_all_running(n, 300, 0.2)
        time.sleep(2)
        for label, fn in KINDS:
            wall: dict[str, list[float]] = {"base": [], "this": []}
            cpu = {"base": 0.0, "this": 0.0}
            for name, d in (("base", base), ("this", this)):
                with cli_of(a.base if name == "base" else None):
                    fn(d)                               # warm
            for _ in range(a.reps):
                for name, d in (("base", base), ("this", this)):
                    with cli_of(a.base if name == "base" else None):
                        c0, t0 = cpu_seconds(d.pid), time.monotonic()
                        fn(d)
                        wall[name].append(1000 * (time.monotonic() - t0))
                        cpu[name] += cpu_seconds(d.pid) - c0
            say(f"  {label:<20} " + "   ".join(
                f"{k} {statistics.median(wall[k]):6.1f} ms (p90 "
                f"{sorted(wall[k])[int(0.9 * (len(wall[k]) - 1))]:6.1f}; daemon CPU "
                f"{1000 * cpu[k] / a.reps:6.1f} ms)" for k in ("base", "this")))
        with open("/proc/loadavg") as f:
            say(f"  load at the end {f.read().split()[:3]}")


if __name__ == "__main__":
    main()
