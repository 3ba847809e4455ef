"""Bench: boots of N plain workers by several pyvisor trees, alternating, with the daemon's CPU
split by thread (the loop's thread, the log-file helper, any other).

    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_boot_threads.py --workers 10000 \
        --reps 2 <tree> <tree> ...

Each tree is a checkout (PYTHONPATH=<tree>, its C modules built in place), booted in the order
given, --reps times: start -> all N alive (the last "spawned pid" line), the daemon's CPU until
then, and utime/stime of each of its threads from /proc/PID/task/*/stat (the loop's thread
first, then the log-file helper; both are called supervisord). No bare loop and no
prober: ext4 is slowest right after a bench removed its log files, so compare trees only in
alternation, within one run.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics

from bench_scale import LimitedPyvisor, wait_log_line
from harness import Run, cpu_seconds, header, say
from mass import pyvisor_workers

TICK = os.sysconf("SC_CLK_TCK")


def threads_of(pid: int) -> list[tuple[str, float, float]]:
    """(name, user s, sys s) of each thread of pid."""
    out = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            name = f.read().strip()
        out.append((name, int(rest[11]) / TICK, int(rest[12]) / TICK))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trees", nargs="+")
    ap.add_argument("--workers", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    n = a.workers
    header("boot by thread", "boot -> all alive, daemon CPU per thread", "(comparison)", n)
    for tree in a.trees:
        for pkg in ("supervisor", "worker"):
            compileall.compile_dir(os.path.join(tree, pkg), quiet=1)
    got: dict[str, list[tuple[float, float]]] = {t: [] for t in a.trees}
    saved = os.environ.get("PYTHONPATH")
    with Run(f"bootthreads{n}") as run:
        for rep in range(a.reps):
            for i, tree in enumerate(a.trees):
                os.environ["PYTHONPATH"] = os.path.abspath(tree)
                try:
                    d = LimitedPyvisor(run, pyvisor_workers("plain", n), f"pv-{rep}-{i}")
                    run.daemons.append(d)
                    t0 = d.start()
                finally:
                    if saved is None:
                        os.environ.pop("PYTHONPATH", None)
                    else:
                        os.environ["PYTHONPATH"] = saved
                boot = wait_log_line(d.log, f"plain:{n - 1} spawned pid", 900) - t0
                cpu = cpu_seconds(d.pid)
                split = ", ".join(f"{name} {u:.2f}u+{s:.2f}s" for name, u, s in
                                  threads_of(d.pid))
                d.terminate()
                got[tree].append((boot, cpu))
                say(f"{tree} rep {rep}: boot {boot:.2f} s, CPU {cpu:.2f} s ({split}), "
                    f"load {os.getloadavg()[0]:.1f}")
    for tree, rs in got.items():
        say(f"{tree}: median boot {statistics.median(r[0] for r in rs):.2f} s, CPU "
            f"{statistics.median(r[1] for r in rs):.2f} s")


if __name__ == "__main__":
    main()
