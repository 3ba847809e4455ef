"""Bench 10: status at 1,000 and 10,000 plain workers, this tree against a base checkout in
the same run (the daemon side of `supervisorctl status`).

For each side (``--base DIR``: an older checkout with its C modules compiled in place, run
through PYTHONPATH; then this tree) and each N: one daemon with one worker `numprocs: N`
(`sleep`), all RUNNING, then, medians of --reps:

  raw status       one `status` request on the socket, to the end of the reply; and the
                   daemon's CPU (user+sys) per raw status, which the machine's load moves less
  raw status json  the same with {"json": true}
  CLI status       the whole `supervisorctl status`, and `supervisorctl pid` (start-up alone)
  pid during       a raw `pid` request sent 5 ms after a raw status began: how long another
                   client waits while the daemon renders a big status (and a raw `pid` alone)

    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_status_scale.py \\
        --base /tmp/status-base --sizes 1000,10000 --reps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

from harness import Pyvisor, Run, cpu_seconds, say
from mass import pyvisor_workers


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.0f} ms" if xs else "-"


def timed(fn: object, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.monotonic()
        fn()  # type: ignore[operator]
        out.append(1000 * (time.monotonic() - t0))
    return out


def during(d: Pyvisor, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = threading.Thread(target=lambda: d.request("status", ["all"], {}))
        t.start()
        time.sleep(0.005)
        t0 = time.monotonic()
        d.request("pid", [], {})
        out.append(1000 * (time.monotonic() - t0))
        t.join()
    return out


def side(label: str, n: int, reps: int) -> None:
    with Run("stscale") as run:
        d = run.pyvisor(pyvisor_workers("plain", n))
        d.start()
        d.wait_all_running(n, 300, 0.2)
        time.sleep(1)
        cpu0 = cpu_seconds(d.pid)
        raw = timed(lambda: d.request("status", ["all"], {}), reps)
        cpu = 1000 * (cpu_seconds(d.pid) - cpu0) / reps
        js = timed(lambda: d.request("status", ["all"], {"json": True}), reps)
        cli = timed(lambda: d.ctl("status"), reps)
        pid = timed(lambda: d.ctl("pid"), reps)
        alone = timed(lambda: d.request("pid", [], {}), reps)
        dur = during(d, reps)
        size = len(d.request("status", ["all"], {})["out"])
        say(f"  {label:<6} N={n:<6} raw status {med(raw)} (daemon CPU {cpu:.0f} ms)  "
            f"raw json {med(js)}  CLI status "
            f"{med(cli)}  CLI pid {med(pid)}  raw pid alone {med(alone)}, during a status "
            f"{med(dur)}  "
            f"({size} chars of text)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", help="an older checkout (C modules compiled in place)")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    with open("/proc/loadavg") as f:
        say(f"== status at scale, base vs this tree == load {f.read().split()[:3]}")
    for n in (int(x) for x in a.sizes.split(",")):
        sides = ([("base", a.base)] if a.base else []) + [("this", None)]
        for label, path in sides:
            if path:
                os.environ["PYTHONPATH"] = path
            else:
                os.environ.pop("PYTHONPATH", None)
            side(label, n, a.reps)


if __name__ == "__main__":
    main()
