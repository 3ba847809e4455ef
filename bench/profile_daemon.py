"""Where the pyvisor daemon's time goes: py-spy samples of the daemon during one scenario.

    .venv/bin/python bench/profile_daemon.py boot|adopt|status|crash|stopall [--workers N]

boot:    daemon start -> N plain workers RUNNING
adopt:   second daemon start (after SIGKILL of the first) -> N RUNNING adopted
status:  7 raw status requests at N workers
crash:   30 kill -9 of a worker (C alive helper), each awaited
stopall: `stop --graceful all` of N library workers
py-spy (`.venv/bin/pip install py-spy`) attaches by PID (--idle: sleeping samples too) and is
stopped with SIGINT; the collapsed stacks are summarised as the top functions by inclusive
and self samples (file:function). Not a pass/fail test; the daemon's own log is kept too.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import PV_BIN, Fifo, Run, alive_binary, parse_args, say, wait_gone
from mass import pyvisor_workers


def spy(pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    exe = str(PV_BIN / "py-spy")
    if not os.path.exists(exe):
        sys.exit("py-spy missing: .venv/bin/pip install py-spy")
    p = subprocess.Popen([exe, "record", "--pid", str(pid), "-r", str(rate), "-f", "raw",
                          "-o", str(out), "--nonblocking"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)   # attach
    return p


def stop_spy(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGINT)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def summarise(path: Path, top: int = 25) -> None:
    incl: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        total += k
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]
        for f in set(frames[1:]):
            incl[f] += k
        self_[frames[-1]] += k
    say(f"{total} samples")
    say("-- inclusive --")
    for f, k in incl.most_common(top):
        say(f"{100 * k / total:5.1f}%  {f}")
    say("-- self --")
    for f, k in self_.most_common(15):
        say(f"{100 * k / total:5.1f}%  {f}")


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1000, extra=lambda ap: (
        ap.add_argument("scenario", choices=["boot", "adopt", "status", "crash", "stopall"]),
        ap.add_argument("--rate", type=int, default=1000)))
    n = a.workers
    with Run("profile") as run:
        out = run.dir / "spy.txt"
        if a.scenario == "crash":
            fifo = Fifo(run.dir / "alive.fifo")
            d = run.pyvisor({"a": {"command": [alive_binary(), fifo.path], "restart": "always",
                                   "start_seconds": 0, "start_retries": 1000,
                                   "backoff": {"initial": 0, "factor": 1, "max": 0}}})
            d.start()
            d.wait_all_running(1, 30)
            pid = [p for p, _ in fifo.read(5)][0]
            p = spy(d.pid, out, a.rate)
            for _ in range(30):
                os.kill(pid, signal.SIGKILL)
                got: list[tuple[int, int]] = []
                while not got:
                    got = fifo.read(5)
                pid = got[-1][0]
                time.sleep(0.1)
            stop_spy(p)
            fifo.close()
        elif a.scenario in ("boot", "status"):
            d = run.pyvisor(pyvisor_workers("plain", n))
            d.start()
            if a.scenario == "boot":
                p = spy(d.pid, out, a.rate)  # misses the first ~0.5 s (imports, config)
                d.wait_all_running(n, 300, 0.2)
            else:
                d.wait_all_running(n, 300, 0.2)
                p = spy(d.pid, out, a.rate)
                for _ in range(7):
                    d.request("status", ["all"], {})
            stop_spy(p)
        elif a.scenario == "adopt":
            d = run.pyvisor(pyvisor_workers("plain", n))
            d.start()
            d.wait_all_running(n, 300, 0.2)
            d.sigkill()
            pre = subprocess.Popen([str(PV_BIN / "py-spy"), "record", "-r", str(a.rate), "-f",
                                    "raw", "-o", str(out), "--", *d.argv()],
                                   env=run.env(), cwd=d.dir, stdout=open(d.log, "ab"),
                                   stderr=subprocess.STDOUT)
            t0 = time.monotonic()
            time.sleep(0.2)
            while True:
                st = d.status_json()
                if st and sum(1 for e in st if e["adopted"]) >= n:
                    break
                time.sleep(0.01)
            say(f"all adopted {1000 * (time.monotonic() - t0):.0f} ms after start (under py-spy)")
            d.ctl("shutdown")
            pre.wait(120)
        else:
            d = run.pyvisor(pyvisor_workers("lib", n))
            d.start()
            d.wait_all_running(n, 900, 0.5)
            pids = [pp for _, pp in (d.states() or {}).values()]
            p = spy(d.pid, out, a.rate)
            t0 = time.monotonic()
            d.ctl("stop", "--graceful", "all")
            say(f"stop all: {1000 * (wait_gone(pids, 120) - t0):.0f} ms")
            stop_spy(p)
        summarise(out)
        say("daemon log tail:\n" + d.log_tail(5))


if __name__ == "__main__":
    main()
