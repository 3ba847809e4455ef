"""One worker of N instances against N workers of one instance each: the two shapes of a big
config, side by side in one run (issue 13 measures the first; a config converted from a
supervisord.conf of many [program:x] sections has the second).

    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_shapes.py --workers 10000 --reps 2 \\
        [--base DIR]

For each shape, in alternating order: boot -> all alive (the last "spawned pid" line of the
daemon's log) and the daemon's CPU until then, its VmRSS once all are RUNNING, `supervisorctl
status` (whole CLI, median of 3) and `stop all` (returned). Plain `sleep` workers. ``--base
DIR``: the daemon and CLI of an older checkout (C modules compiled in place) through
PYTHONPATH, for a before/after of the same shapes in another run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from harness import Pyvisor, Run, cpu_seconds, rss_kb, say
from mass import SLEEP


def shape(kind: str, n: int) -> dict[str, dict[str, Any]]:
    plain = {"command": [SLEEP, "100000"], "start_seconds": 0}
    if kind == "numprocs":
        return {"plain": {**plain, "numprocs": n}}
    return {f"w{i}": dict(plain) for i in range(n)}


def wait_spawned(d: Pyvisor, n: int, timeout: float) -> None:
    """Until the daemon's log has n "spawned pid" lines (only what is new read each time)."""
    end, pos, count, rest = time.monotonic() + timeout, 0, 0, b""
    while count < n and time.monotonic() < end:
        time.sleep(0.05)
        try:
            with open(d.log, "rb") as f:
                f.seek(pos)
                chunk = rest + f.read()
                pos = f.tell()
        except OSError:
            continue
        cut = chunk.rfind(b"\n") + 1
        count += chunk[:cut].count(b" spawned pid ")
        rest = chunk[cut:]


def measure(run: Run, kind: str, n: int, rep: int) -> dict[str, float]:
    d = run.pyvisor(shape(kind, n), name=f"{kind[:4]}{rep}")
    res: dict[str, float] = {}
    t0 = d.start()
    wait_spawned(d, n, 900)
    res["alive"] = time.monotonic() - t0
    res["cpu"] = cpu_seconds(d.pid)
    d.wait_all_running(n, 300, 0.5)
    res["rss"] = rss_kb(d.pid) / 1024
    res["status"] = statistics.median(d.ctl("status")[2] for _ in range(3)) * 1000
    res["stop"] = d.ctl("stop", "all", timeout=300)[2]
    d.terminate()
    run.daemons.remove(d)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--base", help="an older checkout (C modules compiled in place)")
    a = ap.parse_args()
    if a.base:
        os.environ["PYTHONPATH"] = a.base
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    say(f"== two shapes of {a.workers} plain workers, "
        f"{'base ' + a.base if a.base else 'this tree'} == load {load}")
    got: dict[str, list[dict[str, float]]] = {"numprocs": [], "distinct": []}
    with Run("shapes") as run:
        for rep in range(a.reps):
            for kind in (("numprocs", "distinct") if rep % 2 == 0 else ("distinct", "numprocs")):
                r = measure(run, kind, a.workers, rep)
                got[kind].append(r)
                say(f"  {kind:9} rep {rep}: alive {r['alive']:.2f} s (CPU {r['cpu']:.2f} s), "
                    f"VmRSS {r['rss']:.1f} MB, status {r['status']:.0f} ms, "
                    f"stop all {r['stop']:.2f} s")
    say("medians:")
    for kind, rs in got.items():
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        say(f"  {kind:9} alive {m['alive']:.2f} s (CPU {m['cpu']:.2f} s), VmRSS "
            f"{m['rss']:.1f} MB, status {m['status']:.0f} ms, stop all {m['stop']:.2f} s")


if __name__ == "__main__":
    main()
