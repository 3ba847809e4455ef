"""Bench 1: crash -> replacement alive latency.

kill -9 a worker, time until its replacement runs its first instruction. The worker is a tiny
C program (bench/workers/alive.c) that writes "pid CLOCK_MONOTONIC-ns" to a FIFO as the first
thing it does, so the figure is kill -> daemon notices -> fork/exec -> new process running,
without any interpreter start-up. pyvisor: restart always, backoff 0, start_seconds 0.
supervisord: autorestart=true, startsecs=0. Kills are spaced (the replacement is awaited, then
a short pause) so every sample is one crash of a settled daemon.
Also (pyvisor only, --lib): the same with a Python library worker, to the moment it is READY.
"""

from __future__ import annotations

import os
import signal
import time

from harness import (
    PV_BIN,
    PY_WORKER,
    Daemon,
    Fifo,
    Run,
    alive_binary,
    header,
    ms,
    parse_args,
    say,
    summary,
    wait_until,
)


def measure(d: Daemon, fifo: Fifo, kills: int, n: int, settle: float) -> list[float]:
    d.start()
    pids: dict[int, int] = {}
    end = time.monotonic() + 60
    while len(pids) < n and time.monotonic() < end:
        for pid, t in fifo.read(0.5):
            pids[pid] = t
    if len(pids) < n:
        raise RuntimeError(f"{d.kind}: only {len(pids)}/{n} workers reported\n{d.log_tail()}")
    d.wait_all_running(n, 60)
    time.sleep(0.5)
    live = [p for p in pids]
    lat: list[float] = []
    for i in range(kills):
        victim = live[i % len(live)]
        t0 = time.monotonic_ns()
        os.kill(victim, signal.SIGKILL)
        got = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:
            for pid, t in fifo.read(0.2):
                if pid != victim and pid not in pids:
                    got = (pid, t)
                    pids[pid] = t
        if got is None:
            raise RuntimeError(f"{d.kind}: no replacement for {victim} within 10 s\n"
                               f"{d.log_tail()}")
        lat.append((got[1] - t0) / 1e6)
        live[i % len(live)] = got[0]
        time.sleep(settle)
    return lat


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1, quick_n=1, extra=lambda ap: (
        ap.add_argument("--kills", type=int, default=50),
        ap.add_argument("--settle", type=float, default=0.1, help="pause between kills (s)"),
        ap.add_argument("--lib", action="store_true", help="also a python library worker")))
    kills = 10 if a.quick else a.kills
    header("crash -> replacement alive", f"kill -9 one of N workers, time until the "
           f"replacement's first instruction; {kills} kills", "p50 <= 5 ms (pyvisor)", a.workers)
    exe = alive_binary()
    results: dict[str, list[float]] = {}
    with Run("crash") as run:
        fifo = Fifo(run.dir / "alive.fifo")
        try:
            if a.only in (None, "pyvisor"):
                d = run.pyvisor({"a": {"command": [exe, fifo.path], "numprocs": a.workers,
                                       "restart": "always", "start_seconds": 0,
                                       "start_retries": 1000,
                                       "backoff": {"initial": 0, "factor": 1, "max": 0}}})
                results["pyvisor"] = measure(d, fifo, kills, a.workers, a.settle)
                d.terminate()
                if a.lib:
                    d = run.pyvisor({"lib": {"command": [str(PV_BIN / "python3"), PY_WORKER,
                                                         fifo.path], "numprocs": a.workers,
                                             "restart": "always", "start_retries": 1000,
                                             "backoff": {"initial": 0, "factor": 1, "max": 0}}},
                                    name="pvlib")
                    results["pyvisor (python lib worker, to READY)"] = measure(
                        d, fifo, max(10, kills // 2), a.workers, a.settle)
                    d.terminate()
            if a.only in (None, "supervisord"):
                d = run.supervisord({"a": {"command": f"{exe} {fifo.path}",
                                           "numprocs": a.workers, "autorestart": "true",
                                           "startsecs": 0, "startretries": 1000}})
                results["supervisord"] = measure(d, fifo, kills, a.workers, a.settle)
                d.terminate()
        finally:
            fifo.close()
    for k, v in results.items():
        say(f"{k:40s} {summary(v)}")
    if "pyvisor" in results and "supervisord" in results:
        from harness import pct
        say(f"ratio supervisord/pyvisor p50: "
            f"{pct(results['supervisord'], 50) / pct(results['pyvisor'], 50):.1f}x")
    _ = (ms, wait_until)


if __name__ == "__main__":
    main()
