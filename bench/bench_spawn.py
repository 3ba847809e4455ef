"""Bench 5: spawn rate at boot: daemon start -> all N RUNNING; spawns/s.

Plain workers (`sleep 100000`; pyvisor start_seconds 0, supervisord startsecs=0) for both, and
pyvisor with library workers that report ready (--kinds plain,lib; Python start-up of 1,000
interpreters on 2 cores dominates that row). RUNNING is polled over the socket every 100 ms
(raw request, no CLI), which costs the daemon a little and adds up to 100 ms.
"""

from __future__ import annotations

from harness import Run, header, parse_args, say
from mass import boot, make, sides


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1000, extra=lambda ap: (
        ap.add_argument("--kinds", default="plain")))
    header("spawn rate at boot", "daemon start -> all N RUNNING", ">= 300 spawns/s (pyvisor)",
           a.workers)
    rows = []
    for kind in a.kinds.split(","):
        for side in sides(a.only):
            with Run("spawn") as run:
                d = make(run, side, kind, a.workers)
                s = boot(d, a.workers, timeout=600)
                rows.append((side, kind, s, a.workers / s))
                say(f"{side:12s} {kind:6s} all {a.workers} RUNNING after {s:.2f} s = "
                    f"{a.workers / s:.0f} spawns/s")
    if len(rows) >= 2 and rows[0][1] == rows[1][1]:
        say(f"ratio pyvisor/supervisord spawns/s ({rows[0][1]}): {rows[0][3] / rows[1][3]:.1f}x")


if __name__ == "__main__":
    main()
