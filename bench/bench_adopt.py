"""Bench 8 (issue "adoption"): restart after a daemon SIGKILL with N running workers.

pyvisor: boot N plain workers, SIGKILL the daemon, start it again; time until the new daemon
answers and until it reports all N RUNNING with "adopted": true, and check zero restarts (every
PID unchanged, no extra processes).
supervisord 4.3.0, same scenario: after the restart count duplicates (live worker processes
beyond the N configured) and orphans (old workers still running that the new supervisord does
not manage). Everything, orphans included, is killed by PID at the end (tagged cleanup).
"""

from __future__ import annotations

import time

from harness import Pyvisor, Run, alive, header, ms, parse_args, say, tagged_pids, wait_until
from mass import make, sides


def workers_alive(run: Run, daemon_pids: set[int]) -> set[int]:
    return {p for p in tagged_pids(run.tag) if p not in daemon_pids and alive(p)}


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1000, extra=lambda ap: (
        ap.add_argument("--kind", default="plain")))
    header("adoption after daemon SIGKILL", "restart -> answers -> all N RUNNING adopted",
           "<= 1 s, zero restarts (pyvisor)", a.workers)
    for side in sides(a.only):
        with Run("adopt") as run:
            d = make(run, side, a.kind, a.workers)
            d.start()
            d.wait_all_running(a.workers, 600, 0.2)
            time.sleep(1)
            before = {n: p for n, (_, p) in (d.states() or {}).items()}
            old = set(before.values())
            d.sigkill()
            t0 = d.start()
            if isinstance(d, Pyvisor):
                st = wait_until(d.status_json, 60, "the new daemon to answer", 0.002)
                t_answer = time.monotonic()

                def all_adopted() -> list[dict] | None:
                    s = d.status_json()
                    ok = s and sum(1 for e in s if e["state"] == "RUNNING" and e["adopted"]) \
                        >= a.workers
                    return s if ok else None
                st = wait_until(all_adopted, 120, f"{a.workers} RUNNING adopted", 0.005)
                t_all = time.monotonic()
                after = {e["name"]: e["pid"] for e in st}
                changed = sum(1 for n, p in before.items() if after.get(n) != p)
                live = workers_alive(run, {d.pid})
                say(f"pyvisor      answered after {ms(t_answer - t0):.0f} ms; all {a.workers} "
                    f"RUNNING adopted after {ms(t_all - t0):.0f} ms; PIDs changed: {changed}; "
                    f"live workers {len(live)} (configured {a.workers}); "
                    f"old still alive {len(old & live)}")
            else:
                wait_until(lambda: d.states() is not None, 60, "supervisord to answer", 0.01)
                t_answer = time.monotonic()
                d.wait_all_running(a.workers, 600, 0.2)
                t_all = time.monotonic()
                time.sleep(1)
                managed = {p for _, p in (d.states() or {}).values() if p}
                live = workers_alive(run, {d.pid})
                orphans = (old & live) - managed
                dup = len(live) - a.workers
                say(f"supervisord  answered after {ms(t_answer - t0):.0f} ms; all {a.workers} "
                    f"RUNNING after {ms(t_all - t0):.0f} ms; PIDs changed: "
                    f"{len(set(before.values()) - managed)}; live workers {len(live)} "
                    f"(configured {a.workers}): duplicates {dup}, orphans {len(orphans)}")
            killed = run.kill_all()
            say(f"{side:12s} cleanup: killed {killed} tagged processes (daemon, workers, "
                f"orphans)")


if __name__ == "__main__":
    main()
