"""Bench: a mass start of N plain `sleep` workers, and how long a request waits meanwhile.

    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_boot.py --workers 10000
    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_boot.py --workers 10000 --spy

In one run: the bare `os.posix_spawn` loop of N sleeps (with output to /dev/null, then with
two new log files per process), as bench_scale.py measures it; then one pyvisor daemon with
one worker `numprocs: N` (`sleep 100000`, start_seconds 0): daemon start -> all N alive (the
last instance's "spawned pid" line in its log), the daemon's CPU until then, and, from the
moment the socket first answers until all are alive, a raw-socket client (no CLI start-up)
sending `pid plain:0` every --interval seconds: the latency of each request, p50 / p99 / max.
That is the time a request waits in the daemon while it spawns (plus one connect and one
JSON round trip). --spy: py-spy samples of the daemon during the boot, summarised.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

from bench_scale import LimitedPyvisor, bare_loop, wait_log_line
from harness import Run, cpu_seconds, header, pct, say
from mass import pyvisor_workers
from profile_daemon import spy, stop_spy, summarise


def probe(path: str, timeout: float = 30) -> float:
    """Seconds for one raw `pid plain:0` request: connect, send, read the whole reply."""
    t0 = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps({"cmd": "pid", "targets": ["plain:0"], "opts": {}}).encode()
                  + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    dt = time.monotonic() - t0
    json.loads(buf)
    return dt


def spawn_window(log: Path, t0_wall: float) -> tuple[float, float, int]:
    """Seconds from the daemon's start to its first and to its last "spawned pid" line (the
    lines' own timestamps), and how many there are."""
    first = last = None
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        if " spawned pid " not in line:
            continue
        try:
            when = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        except ValueError:
            continue
        first = when if first is None else first
        last = when
        count += 1
    if first is None or last is None:
        return float("nan"), float("nan"), 0
    return first - t0_wall, last - t0_wall, count


def boot_once(run: Run, n: int, a: argparse.Namespace, label: str, rep: int, bare: float,
              bare_logs: float, pythonpath: str | None) -> dict[str, float]:
    """One daemon: start -> all N alive, with the raw-socket prober running; then SIGTERM."""
    saved = os.environ.get("PYTHONPATH")
    if pythonpath is not None:
        os.environ["PYTHONPATH"] = pythonpath      # Run.env() copies os.environ
    try:
        d = LimitedPyvisor(run, pyvisor_workers("plain", n), f"pv{n}-{label}-{rep}",
                           cgroups=not a.no_cgroups)
        run.daemons.append(d)
        lat: list[float] = []
        failed: list[str] = []
        done = threading.Event()

        def prober() -> None:
            while not done.is_set():
                try:
                    lat.append(probe(d.sock))
                except (OSError, ValueError) as e:
                    if lat:            # before the socket is up, refusals are expected
                        failed.append(str(e))
                done.wait(a.interval)

        t0_wall = time.time()
        t0 = d.start()
    finally:
        if pythonpath is not None:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
    th = threading.Thread(target=prober, daemon=True)
    th.start()
    sp = None
    if a.spy:
        while not d.dir.joinpath("ctl.sock").exists() and time.monotonic() - t0 < 60:
            time.sleep(0.01)
        sp = spy(d.pid, run.dir / f"spy-{label}.txt", 250)
    t_alive = wait_log_line(d.log, f"plain:{n - 1} spawned pid", 900)
    cpu = cpu_seconds(d.pid)
    done.set()
    th.join()
    if sp is not None:
        stop_spy(sp)
    boot = t_alive - t0
    say(f"pyvisor N={n} ({label})")
    ratio = (f" ({boot / bare:.2f}x the bare loop, {boot / bare_logs:.2f}x with log files)"
             if bare else "")
    say(f"  boot -> all alive                {boot:.2f} s = {n / boot:.0f}/s{ratio}")
    say(f"  the daemon's CPU until then      {cpu:.2f} s")
    first, last, count = spawn_window(d.log, t0_wall)
    say(f"  first / last spawn (daemon log)  {first:.2f} / {last:.2f} s: {count} spawns "
        f"in {last - first:.2f} s = {(count - 1) / max(last - first, 1e-9):.0f}/s")
    res = {"boot": boot, "cpu": cpu, "first": first}
    if lat:
        ms = [1000 * x for x in lat]
        res["p50"], res["p99"], res["max"] = pct(ms, 50), pct(ms, 99), max(ms)
        say(f"  raw `pid` during it: p50 / p99 / max   {res['p50']:.1f} / {res['p99']:.1f} / "
            f"{res['max']:.1f} ms (n={len(ms)}, {len(failed)} failed)")
        if len(ms) > 1:     # the first one waits while the daemon sets up and requests starts
            say(f"    the first {ms[0]:.1f} ms; the others' max {max(ms[1:]):.1f} ms")
    if sp is not None:
        summarise(run.dir / f"spy-{label}.txt", top=40)
    t_stop = time.monotonic()
    d.terminate()
    say(f"  SIGTERM -> daemon gone           {time.monotonic() - t_stop:.2f} s")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=10000)
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between probes")
    ap.add_argument("--spy", action="store_true", help="py-spy the daemon during the boot")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare loops")
    ap.add_argument("--no-cgroups", action="store_true",
                    help="the daemons with cgroups: false (process groups only)")
    ap.add_argument("--base", help="also boot the pyvisor checkout at this path (PYTHONPATH, "
                                   "its C modules built in place), alternating with this one")
    ap.add_argument("--this", help="boot the checkout at this path instead of the one the venv "
                                   "imports (a snapshot, so edits meanwhile do not leak in)")
    ap.add_argument("--reps", type=int, default=1, help="boots of each")
    ap.add_argument("--this-first", action="store_true", help="boot this tree before the base")
    a = ap.parse_args()
    n = a.workers
    header("mass start", "boot -> all alive vs the bare loop; raw `pid` latency during it",
           "<= 2.5x the bare loop; request p99 <= 150 ms", n)
    # This session's environment may carry PYTHONDONTWRITEBYTECODE=1: then every daemon start
    # would compile the whole package from source (0.3-1 s here), which an installed daemon
    # (pip byte-compiles) never does. Compile each checkout once; the flag only stops writing.
    trees = [a.this or str(Path(__file__).resolve().parents[1])] + ([a.base] if a.base else [])
    for tree in trees:
        for pkg in ("supervisor", "worker"):
            compileall.compile_dir(os.path.join(tree, pkg), quiet=1)
    with Run(f"boot{n}") as run:
        bare = bare_logs = 0.0
        if not a.no_bare:
            bare = bare_loop(run, n, logs=False)
            bare_logs = bare_loop(run, n, logs=True)
            say(f"bare posix_spawn loop N={n}: {bare:.2f} s = {n / bare:.0f}/s; with two new "
                f"log files each: {bare_logs:.2f} s = {n / bare_logs:.0f}/s")
        variants: list[tuple[str, str | None]] = [
            ("this", os.path.abspath(a.this) if a.this else None)]
        if a.base:
            variants.insert(len(variants) if a.this_first else 0,
                            ("base", os.path.abspath(a.base)))
        got: dict[str, list[dict[str, float]]] = {label: [] for label, _ in variants}
        for rep in range(a.reps):
            for label, path in variants:
                got[label].append(boot_once(run, n, a, label, rep, bare, bare_logs, path))
        if len(variants) > 1 or a.reps > 1:
            say("medians:")
            for label, rs in got.items():
                def m(k: str, rs: list[dict[str, float]] = rs) -> float:
                    return statistics.median(r.get(k, float("nan")) for r in rs)
                say(f"  {label}: boot {m('boot'):.2f} s" + (f" ({m('boot') / bare:.2f}x bare, "
                    f"{m('boot') / bare_logs:.2f}x with logs)" if bare else "")
                    + f", CPU {m('cpu'):.2f} s, raw pid p50/p99 {m('p50'):.1f}/{m('p99'):.1f} ms")


if __name__ == "__main__":
    main()
