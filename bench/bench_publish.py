"""Cost of what a worker publishes, beside the should_stop poll; prints figures, not pass/fail.

    .venv/bin/python bench/bench_publish.py                 # ~20 s
    .venv/bin/python bench/bench_publish.py --number 2000000 --samples 21

Worker side, ns per call (median and p99 of --samples timeit runs of --number calls each,
the empty loop subtracted):
    w.should_stop                   the hot-path poll (the reference)
    w.counter("jobs").inc()         lookup + add           target: <= 2x should_stop
    jobs.inc()                      add on a kept Metric
    w.gauge("depth").set(7)
    w.status("...")                 a text under the seqlock (not for the hot loop)
Daemon side, us per call: ControlBlock.worker_data() with 1 text and 16 metrics (what
status and the metrics collector pay per instance).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import timeit
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker import Worker  # noqa: E402
from worker.ctlpage import ControlBlock  # noqa: E402


def per_call(stmt: str, env: dict[str, object], number: int, samples: int) -> list[float]:
    t = timeit.Timer(stmt, globals=env)
    return [x / number * 1e9 for x in t.repeat(repeat=samples, number=number)]


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=11)
    a = ap.parse_args()
    print(__doc__.splitlines()[0])
    print(f"load average {os.getloadavg()[0]:.2f}; {a.samples} samples x {a.number:,} calls")
    name = f"/pvbench{uuid.uuid4().hex[:8]}.pub:0"
    blk = ControlBlock.create(name, slot=0, supervisor_pid=os.getpid(), epoch=1)
    try:
        w = Worker(name=name)
        jobs = w.counter("jobs")
        w.gauge("depth")
        for i in range(14):
            w.counter(f"m{i}")
        w.status("loading model 3/5")
        env: dict[str, object] = {"w": w, "jobs": jobs, "blk": blk}
        empty = statistics.median(per_call("pass", env, a.number, a.samples))
        rows = [
            ("w.should_stop", "w.should_stop", a.number),
            ('w.counter("jobs").inc()', 'w.counter("jobs").inc()', a.number),
            ("jobs.inc()", "jobs.inc()", a.number),
            ('w.gauge("depth").set(7)', 'w.gauge("depth").set(7)', a.number),
            ('w.status("loading model 3/5")', 'w.status("loading model 3/5")', a.number // 10),
        ]
        print(f"\nworker side, ns per call (empty loop {empty:.1f} ns subtracted)")
        medians = {}
        for label, stmt, n in rows:
            xs = [x - empty for x in per_call(stmt, env, n, a.samples)]
            medians[label] = statistics.median(xs)
            print(f"  {label:32s} median {medians[label]:7.1f}   p99 {p99(xs):7.1f}")
        ratio = medians['w.counter("jobs").inc()'] / medians["w.should_stop"]
        print(f"  counter().inc() / should_stop = {ratio:.2f}x   (target <= 2x)")
        n = max(a.number // 100, 1000)
        xs = [x / 1000 for x in per_call("blk.worker_data()", env, n, a.samples)]
        print("\ndaemon side, us per call")
        print(f"  {'ControlBlock.worker_data()':32s} median {statistics.median(xs):7.2f}   "
              f"p99 {p99(xs):7.2f}   (1 text, 16 metrics)")
        w.close()
    finally:
        blk.unlink()
        blk.close()


if __name__ == "__main__":
    main()
