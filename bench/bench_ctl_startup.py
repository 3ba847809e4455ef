"""Bench: supervisorctl's start-up, before/after the click-free fast path, in one run.

One pyvisor daemon with N plain `sleep` workers (default 1000). Each CLI variant runs the
same argument lists, interleaved (variant A, B, C, A, B, C, ...), --runs times each:

  base     the CLI of another checkout (--base DIR, e.g. from `git archive`), PYTHONPATH=DIR
  click    this tree's click CLI alone (supervisor.ctl.cli: what every form cost before)
  fast     this tree's entry point (supervisor.ctl.main: the fast path for status and pid)

each started as `python -c "...; from supervisor.ctl.X import main; main()"`, so all three pay
the same interpreter start-up; `python -c pass` and `python -c "import click"` beside them.
Then the same `pid plain:0` probes during `stop all` + `start all` (the daemon busy spawning
N processes): --cycles rounds, probes alternating between the variants back to back.
Printed: median / p99 / min of the wall time in ms.

    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_ctl_startup.py --base /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import REPO, Pyvisor, Run, header, ms, pct, say, wait_until
from mass import pyvisor_workers

RUNNER = ("import sys; sys.argv[0] = 'supervisorctl'; "
          "from supervisor.ctl.{module} import main; main()")


def variants(base: Path | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (argv prefix, extra environment)."""
    out: dict[str, tuple[list[str], dict[str, str]]] = {}
    if base is not None:
        out["base"] = ([sys.executable, "-c", RUNNER.format(module="main")],
                       {"PYTHONPATH": str(base)})
    out["click"] = ([sys.executable, "-c", RUNNER.format(module="cli")],
                    {"PYTHONPATH": str(REPO)})
    out["fast"] = ([sys.executable, "-c", RUNNER.format(module="main")],
                   {"PYTHONPATH": str(REPO)})
    return out


def once(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """Wall time (ms) and exit code of one run. Waited for with a blocking waitpid: a
    subprocess wait with a timeout polls with sleeps growing to 50 ms, which would round every
    figure up to 63.5 + 50k ms."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    watchdog = threading.Timer(120, p.kill)     # a hung CLI must not hang the bench
    watchdog.start()
    try:
        rc = p.wait()
    finally:
        watchdog.cancel()
    return ms(time.monotonic() - t0), rc


def raw(sock: str, form: list[str]) -> float:
    """Wall time (ms) of the form's request on the socket from this process, the reply read
    whole but not decoded: the daemon's part of a CLI run, without the CLI."""
    verb, targets = form[0], [t for t in form[1:] if not t.startswith("-")]
    opts = {"json": "--json" in form} if verb == "status" else {}
    line = json.dumps({"cmd": verb, "targets": targets or (["all"] if verb == "status" else []),
                       "opts": opts}).encode() + b"\n"
    t0 = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(120)
        s.connect(sock)
        s.sendall(line)
        while (chunk := s.recv(1 << 20)) and not chunk.endswith(b"\n"):
            pass
    return ms(time.monotonic() - t0)


def line(name: str, xs: list[float]) -> None:
    say(f"  {name:<34s} median {pct(xs, 50):6.0f}  p99 {pct(xs, 99):6.0f}  "
        f"min {min(xs):6.0f} ms  (n={len(xs)})")


def start_all(d: Pyvisor, took: list[float], done: threading.Event) -> None:
    t = time.monotonic()
    d.ctl("start", "all", timeout=600)
    took.append(time.monotonic() - t)
    done.set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=1000, help="workers")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--cycles", type=int, default=3, help="stop all + start all rounds")
    ap.add_argument("--base", type=Path, help="a checkout of the code to compare with")
    a = ap.parse_args()
    header("supervisorctl start-up", "wall time of whole CLI runs, idle and during start all",
           "status <= 60 ms at 1k; pid p99 <= 150 ms during a mass start", a.n)
    with Run("ctlstart") as run:
        d = Pyvisor(run, pyvisor_workers("plain", a.n), "pv")
        run.daemons.append(d)
        d.start()
        wait_until(lambda: d.count_running() >= a.n, 600, f"{a.n} RUNNING", 0.25)
        time.sleep(3)       # let the daemon finish the boot's logging before measuring
        env = run.env()
        vs = variants(a.base)
        cfg = ["-c", str(d.config)]
        for code in ("pass", "import click"):
            xs = [once([sys.executable, "-c", code], env, d.dir)[0] for _ in range(a.runs)]
            line(f"python -c {code!r}", xs)
        for form in (["pid"], ["pid", "plain:0"], ["status"], ["status", "--json"]):
            times: dict[str, list[float]] = {v: [] for v in vs}
            codes: dict[str, set[int]] = {v: set() for v in vs}
            raws: list[float] = []
            for _ in range(a.runs):
                for v, (prefix, extra) in vs.items():
                    t, rc = once([*prefix, *cfg, *form], {**env, **extra}, d.dir)
                    times[v].append(t)
                    codes[v].add(rc)
                raws.append(raw(d.sock, form))
            say(f"supervisorctl {' '.join(form)} (N={a.n}, idle daemon)")
            for v in vs:
                line(f"{v} (exit {sorted(codes[v])})", times[v])
            line("raw socket, no CLI", raws)
        if not a.cycles:
            say(f"load average at the end: {os.getloadavg()}")
            return
        probes: dict[str, list[float]] = {v: [] for v in vs}
        took: list[float] = []
        for _ in range(a.cycles):
            d.ctl("stop", "all", timeout=300)
            done = threading.Event()
            th = threading.Thread(target=start_all, args=(d, took, done))
            th.start()
            while not done.is_set():
                for v, (prefix, extra) in vs.items():
                    if done.is_set():
                        break
                    probes[v].append(once([*prefix, *cfg, "pid", "plain:0"],
                                          {**env, **extra}, d.dir)[0])
            th.join()
        say(f"supervisorctl pid plain:0 during start all of {a.n} "
            f"({a.cycles} rounds, start all took {', '.join(f'{t:.1f}' for t in took)} s)")
        for v in vs:
            line(v, probes[v])
        say(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
