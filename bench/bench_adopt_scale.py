"""Bench 10: adoption of N plain workers after a daemon SIGKILL, repeated on one set of workers.

Boots one pyvisor daemon with N `sleep` workers (default 10,000) once, then --reps times:
SIGKILL the daemon, start a new one, and time

  answers    new daemon start -> its first answer on the socket (a raw `pid` request)
  verified   -> a `status --json` (raw socket) listing all N RUNNING and adopted, with the PIDs
             recorded before the first kill (0 changed; polled until so, for at most 60 s)
  cpu        the new daemon's CPU time (utime + stime) when it first answered

With --base DIR (a checkout of another commit whose C modules are built in place), every rep
runs one daemon of that checkout (PYTHONPATH=DIR) and one of this tree on the same workers,
in alternating order: a before/after measured in one run, on the same load. --this DIR runs
a snapshot of this tree the same way (`git archive HEAD | tar -x -C DIR`, the .so files
copied in).

    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_adopt_scale.py --reps 3
    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_adopt_scale.py --base /tmp/base
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from harness import Pyvisor, Run, cpu_seconds, header, parse_args, say, wait_until
from mass import pyvisor_workers


def adopt_once(d: Pyvisor, n: int, before: dict[str, int],
               pythonpath: str | None) -> tuple[float, float, float, int, int]:
    """(answers s, verified s, daemon CPU s at its first answer, adopted, PIDs changed)."""
    d.sigkill()
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    try:
        t0 = d.start()
    finally:
        os.environ.pop("PYTHONPATH", None)

    def answers() -> bool:
        try:
            d.request("pid", [], {}, timeout=30)
            return True
        except OSError:
            return False

    wait_until(answers, 120, "the new daemon to answer", 0.005)
    t_answer = time.monotonic()
    cpu = cpu_seconds(d.pid)
    adopted = changed = 0

    def all_verified() -> bool:
        nonlocal adopted, changed
        st = d.status_json() or []
        adopted = sum(e["state"] == "RUNNING" and e["adopted"] for e in st)
        changed = sum(1 for e in st if before.get(e["name"]) != e["pid"])
        return adopted >= n and changed == 0

    wait_until(all_verified, 60, f"{n} RUNNING adopted, 0 PIDs changed", 0.005)
    return t_answer - t0, time.monotonic() - t0, cpu, adopted, changed


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=10000, quick_n=1000, extra=lambda ap: (
        ap.add_argument("--reps", type=int, default=3),
        ap.add_argument("--base", help="a checkout to compare with (PYTHONPATH=BASE)"),
        ap.add_argument("--this", help="a snapshot of this tree to run instead of the tree "
                        "itself (PYTHONPATH=THIS), so that edits during the run do not count")))
    n = a.workers
    header("adoption at scale", "SIGKILL -> new daemon answers / all N verified adopted",
           "<= 4 s to all verified at 10k, 0 PIDs changed", n)
    sides: list[tuple[str, str | None]] = [
        ("this tree", os.path.abspath(a.this) if a.this else None)]
    if a.base:
        sides.insert(0, (f"base {a.base}", os.path.abspath(a.base)))
    with Run("adopt-scale") as run:
        d = run.pyvisor(pyvisor_workers("plain", n))
        t0 = d.start()
        d.wait_all_running(n, 600, 0.5)
        say(f"booted {n} in {time.monotonic() - t0:.1f} s")
        before = {name: pid for name, (_s, pid) in (d.states() or {}).items()}
        got: dict[str, list[tuple[float, float, float]]] = {s: [] for s, _ in sides}
        for rep in range(a.reps):
            order = sides if rep % 2 == 0 else list(reversed(sides))
            for side, path in order:
                ans, ver, cpu, adopted, changed = adopt_once(d, n, before, path)
                got[side].append((ans, ver, cpu))
                load = Path("/proc/loadavg").read_text().split()[0]
                say(f"rep {rep + 1} {side:>20s}: answers {ans:.2f} s, verified {ver:.2f} s, "
                    f"daemon CPU {cpu:.2f} s ({adopted} RUNNING adopted, {changed} PIDs "
                    f"changed, load {load})")
        for side, rows in got.items():
            med = [statistics.median(r[i] for r in rows) for i in range(3)]
            say(f"median {side:>20s}: answers {med[0]:.2f} s, verified {med[1]:.2f} s, "
                f"daemon CPU at answer {med[2]:.2f} s (best verified "
                f"{min(r[1] for r in rows):.2f} s, of {len(rows)})")


if __name__ == "__main__":
    main()
