"""reload of a config of many one-instance workers (what --convert makes of a supervisord.conf
of many [program:x] sections): how long `supervisorctl reload` takes, how `pid` is answered
meanwhile (a client asking in a loop over the raw socket: max / p99 / p50), and the daemon's
VmRSS after each reload.

    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_reload.py --workers 4000 \\
        [--repo DIR] [--reloads 3]

Reloads in turn: nothing changed, one worker changed (it is restarted), nothing changed.
``--repo DIR``: the daemon, CLI and harness of another checkout (C modules compiled in place),
for a before/after in one run (a checkout before 7e8d462 refuses a config over 1 MiB: about
5,000 of these workers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--workers", type=int, default=4000)
ap.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
ap.add_argument("--reloads", type=int, default=3)
args = ap.parse_args()
sys.path.insert(0, str(Path(args.repo) / "bench"))

from harness import Pyvisor, Run, rss_kb, say  # noqa: E402
from mass import SLEEP  # noqa: E402


def probe(d: Pyvisor, stop: threading.Event, lat: list[float]) -> None:
    """`pid` over the raw socket in a loop until stop: each round trip's seconds in lat."""
    while not stop.is_set():
        t = time.monotonic()
        d.request("pid", [], timeout=60)
        lat.append(time.monotonic() - t)


def main() -> None:
    n = args.workers
    with Run("reload") as run:
        workers = {f"w{i}": {"command": [SLEEP, "100000"], "start_seconds": 0,
                             "directory": "/tmp",
                             "environment": {"APP_ENV": "production", "APP_INDEX": str(i)}}
                   for i in range(n)}
        d = run.pyvisor(workers)
        d.start()
        d.wait_all_running(n, 600, 0.5)
        say(f"{args.repo}: {n} workers RUNNING, config {d.config.stat().st_size:,} bytes, "
            f"VmRSS {rss_kb(d.pid) / 1024:.1f} MB")
        for rep in range(args.reloads):
            what = "one worker changed" if rep % 3 == 1 else "nothing changed"
            cfg = json.loads(d.config.read_text())
            if rep % 3 == 1:
                cfg["workers"]["w0"]["environment"]["REP"] = str(rep)
            d.config.write_text(json.dumps(cfg, indent=1))
            lat: list[float] = []
            stop = threading.Event()
            th = threading.Thread(target=probe, args=(d, stop, lat))
            th.start()
            time.sleep(0.2)
            rc, out, took = d.ctl("reload", timeout=600)
            stop.set()
            th.join()
            lat.sort()
            say(f"  reload {rep} ({what}): exit {rc}, {took:.2f} s; pid meanwhile: max "
                f"{lat[-1] * 1000:.0f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.0f} ms, p50 "
                f"{statistics.median(lat) * 1000:.1f} ms (n={len(lat)}); VmRSS "
                f"{rss_kb(d.pid) / 1024:.1f} MB")


if __name__ == "__main__":
    main()
