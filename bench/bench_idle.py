"""Bench 3: daemon idle CPU and RSS with N workers.

Boot N workers, wait until all RUNNING, let it settle, then sample the daemon's utime+stime
(/proc/PID/stat) over an idle window and its VmRSS; also the CPU of all workers together
over the same window (what idle library workers cost the machine). Worker kinds: plain (`sleep 100000`) and
library (Python worker blocked in wait_for_stop; under supervisord the same script blocks in
sigwait). Both supervisors, one after the other in the same run.
"""

from __future__ import annotations

import time

from harness import Run, cpu_seconds, header, parse_args, rss_kb, say
from mass import boot, make, sides


def workers_cpu(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1000, extra=lambda ap: (
        ap.add_argument("--idle", type=float, default=30.0, help="idle window (s)"),
        ap.add_argument("--kinds", default="plain,lib")))
    idle = min(a.idle, 10.0) if a.quick else a.idle
    header("daemon idle CPU and RSS", f"daemon utime+stime over {idle:.0f} s idle, VmRSS",
           "CPU <= 0.1 % of a core, RSS <= 50 MB (pyvisor)", a.workers)
    rows = []
    for kind in a.kinds.split(","):
        for side in sides(a.only):
            with Run("idle") as run:
                d = make(run, side, kind, a.workers)
                boot_s = boot(d, a.workers)
                time.sleep(3)
                wpids = [p for _, p in (d.states() or {}).values() if p]
                c0, w0, t0 = cpu_seconds(d.pid), workers_cpu(wpids), time.monotonic()
                time.sleep(idle)
                c1, w1, t1 = cpu_seconds(d.pid), workers_cpu(wpids), time.monotonic()
                rss = rss_kb(d.pid)
                cpu_pct = 100 * (c1 - c0) / (t1 - t0)
                rows.append((side, kind, cpu_pct, rss / 1024, boot_s))
                say(f"{side:12s} {kind:6s} idle CPU {cpu_pct:.3f} % of a core "
                    f"({c1 - c0:.2f} s over {t1 - t0:.1f} s)  RSS {rss / 1024:.1f} MB  "
                    f"(boot to all RUNNING {boot_s:.2f} s); all workers together "
                    f"{100 * (w1 - w0) / (t1 - t0):.2f} % of a core")
    say("summary:")
    for side, kind, c, r, _ in rows:
        say(f"  {side:12s} {kind:6s} cpu={c:.3f}%  rss={r:.1f}MB")


if __name__ == "__main__":
    main()
