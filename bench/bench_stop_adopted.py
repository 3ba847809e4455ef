"""`supervisorctl stop all` of N ADOPTED plain sleep workers: returned, all gone, CPU by thread.

    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_stop_adopted.py --workers 10000 \
        --reps 3 [--base BASE_CHECKOUT] [--this SNAPSHOT] [--spy] [--settle S]

As bench_scale.py measures its "stop all" row: one daemon boots N `sleep` workers once; each
rep SIGKILLs the daemon, starts a new one that adopts the N instances (awaited until a status
lists all N RUNNING adopted with their PIDs unchanged), waits --settle seconds (0, as
bench_scale does), then times `supervisorctl stop all` until every worker is gone (pidfds
polled here: the signals and the kernel's exits) and until the command returns (the daemon
booked every exit and answered). The adopted workers are not the new daemon's children: their
exits reach it by pidfd readability alone. Printed beside: the daemon's CPU over the stop, by
thread (/proc/PID/task/*/stat), and what is left right after the reply (shm names, instance
cgroups, pidfds). Then `start all` (raw request, waited for), so that the next rep has
workers for its new daemon to adopt.

--base DIR: every rep runs one adopting daemon from that checkout (PYTHONPATH=DIR, its C
modules compiled in place: `bash .ci/setup` there) and one from this tree (or from --this,
a snapshot of it), in alternating order, on the same workers: before/after in one run.
--spy: py-spy samples the adopting daemon over the first stop of each side (1000/s,
--nonblocking; with --native: --gil --native at 250/s, which stops the daemon at each sample
and slows the stop many times over); the top functions are printed, the raw stacks kept in
/tmp.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from bench_stopall import _left, _pidfds, _wait_all
from harness import CLK_TCK, PV_BIN, Pyvisor, Run, header, median, say, wait_until
from mass import pyvisor_workers
from profile_daemon import stop_spy, summarise


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (utime + stime) per thread of pid, by "comm/tid"."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        f = stat[stat.rindex(")") + 2:].split()
        out[f"{comm}/{tid}"] = (int(f[11]) + int(f[12])) / CLK_TCK
    return out


def by_thread(pid: int, before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds over the window: the loop's thread (tid == pid) as "loop", every other
    thread by its name (Python threads keep the process's name: "supervisord")."""
    got: dict[str, float] = {}
    for key, cpu in after.items():
        name, tid = key.rsplit("/", 1)
        name = "loop" if int(tid) == pid else f"{name} (other threads)"
        got[name] = got.get(name, 0.0) + cpu - before.get(key, 0.0)
    return {k: v for k, v in got.items() if v > 0}


def adopt(d: Pyvisor, n: int, before: dict[str, int], pythonpath: str | None) -> float:
    """SIGKILL d's daemon and start a new one that adopts the N workers; seconds to all
    verified."""
    d.sigkill()
    plain = d.run.env
    if pythonpath:
        d.run.env = lambda: {**plain(), "PYTHONPATH": pythonpath}   # type: ignore[method-assign]
    try:
        t0 = d.start()
    finally:
        d.run.env = plain                                           # type: ignore[method-assign]

    def verified() -> bool:
        st = d.status_json() or []
        ok = sum(e["state"] == "RUNNING" and e["adopted"] for e in st)
        return ok >= n and all(before.get(e["name"]) == e["pid"] for e in st)

    wait_until(verified, 120, f"{n} RUNNING adopted, 0 PIDs changed", 0.01)
    return time.monotonic() - t0


def stop_once(d: Pyvisor, spy_out: Path | None, native: bool = False) -> dict[str, object]:
    st = d.states() or {}
    pids = [p for s, p in st.values() if s == "RUNNING" and p]
    ep, fds = _pidfds(pids)
    sp = None
    if spy_out is not None:
        how = ["-r", "250", "--gil", "--native"] if native else ["-r", "1000", "--nonblocking"]
        sp = subprocess.Popen([str(PV_BIN / "py-spy"), "record", "--pid", str(d.pid), *how,
                               "-f", "raw", "-o", str(spy_out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)   # attach
    try:
        cpu0 = thread_cpu(d.pid)
        t0 = time.monotonic()
        proc = subprocess.Popen(d.ctl_argv("stop", "all"), env=d.run.env(), cwd=d.dir,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        gone = _wait_all(ep, len(fds), 120) - t0
        _out, err = proc.communicate(timeout=300)
        returned = time.monotonic() - t0
        threads = by_thread(d.pid, cpu0, thread_cpu(d.pid))
        if proc.returncode != 0:
            say(f"stop all exited {proc.returncode}: {err.decode(errors='replace')[:300]}")
            say("daemon log tail:\n" + d.log_tail(40))
        shm, cgs, pidfds = _left(d)
    finally:
        if sp is not None:
            stop_spy(sp)
        ep.close()
        for fd in fds:
            os.close(fd)
    return {"gone": gone, "returned": returned, "cpu": sum(threads.values()),
            "threads": threads, "left": (shm, cgs, pidfds), "n": len(fds),
            "rc": proc.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--base", help="a checkout to compare with (PYTHONPATH=BASE)")
    ap.add_argument("--this", help="a snapshot of this tree to run instead of the tree itself")
    ap.add_argument("--side", action="append", default=[], metavar="NAME=DIR",
                    help="one more checkout to compare (PYTHONPATH=DIR), run between base and "
                    "this; may be repeated")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds between all verified and the stop (bench_scale: 0)")
    ap.add_argument("--spy", action="store_true")
    ap.add_argument("--native", action="store_true", help="--spy with native frames (py-spy "
                    "--gil --native: it stops the daemon at each sample, ~50x slower)")
    a = ap.parse_args()
    n = a.workers
    header("stop all of adopted workers", "SIGKILL, adopt N, stop all -> all gone / returned",
           "stop all <= 2 s at 10k", n)
    sides: list[tuple[str, str | None]] = [
        ("this", os.path.abspath(a.this) if a.this else None)]
    for spec in reversed(a.side):
        name, _, path = spec.partition("=")
        sides.insert(0, (name, os.path.abspath(path)))
    if a.base:
        sides.insert(0, ("base", os.path.abspath(a.base)))
    rows: dict[str, list[dict[str, object]]] = {s: [] for s, _ in sides}
    with Run("stopadopt") as run:
        d = run.pyvisor(pyvisor_workers("plain", n))
        t0 = d.start()
        d.wait_all_running(n, 600, 0.5)
        say(f"booted {n} in {time.monotonic() - t0:.1f} s")
        for rep in range(a.reps):
            order = sides if rep % 2 == 0 else list(reversed(sides))
            for side, path in order:
                before = {name: pid for name, (_s, pid) in (d.states() or {}).items()}
                ver = adopt(d, n, before, path)
                if a.settle:
                    time.sleep(a.settle)
                load = os.getloadavg()[0]
                spy_out = Path(f"/tmp/stop-adopted-spy-{side}-{os.getpid()}.txt") if (
                    a.spy and rep < 2 and len(rows[side]) == 0) else None
                r = stop_once(d, spy_out, a.native)
                rows[side].append(r)
                th = ", ".join(f"{k} {v:.2f}" for k, v in sorted(
                    r["threads"].items(), key=lambda kv: -kv[1]))   # type: ignore[attr-defined]
                say(f"rep {rep + 1} {side}: adopted in {ver:.2f} s; stop all of {r['n']} -> "
                    f"all gone {r['gone']:.2f} s, returned {r['returned']:.2f} s (exit "
                    f"{r['rc']}), daemon CPU {r['cpu']:.2f} s [{th}] (load {load:.1f}); left "
                    f"after the reply: shm/cgroups/pidfds {r['left']}")
                if spy_out is not None:
                    summarise(spy_out)
                    say(f"raw py-spy stacks kept in {spy_out}")
                if rep + 1 < a.reps or side != order[-1][0]:
                    d.request("start", ["all"], {"wait": True}, timeout=600)
                    d.wait_all_running(n, 600, 0.5)
        for side, got in rows.items():
            g, r_, c = (median([float(x[k]) for x in got])   # type: ignore[arg-type]
                        for k in ("gone", "returned", "cpu"))
            names = sorted({k for x in got for k in x["threads"]})   # type: ignore[attr-defined]
            th = ", ".join(f"{k} {median([x['threads'].get(k, 0.0) for x in got]):.2f}"  # type: ignore[attr-defined]
                           for k in names)
            say(f"median {side} of {len(got)}: all gone {g:.2f} s, returned {r_:.2f} s, daemon "
                f"CPU {c:.2f} s [{th}]")


if __name__ == "__main__":
    main()
