"""Bench: one-instance stops in a row, before/after in one run (the stop's intent written before
its signal, runtime/intent.py before_step).

N plain `sleep` workers (default 1000) per daemon; --stops stops in all (default 10,000), each
of one instance, one after the other: the instances in turn, a raw `start all` (not timed)
after each round of N. Each stop is timed two ways:

  raw   one request on the control socket, command -> reply (the daemon's handling of the
        stop, the worker's exit included: a stop replies once the instance is STOPPED)
  cli   the whole `supervisorctl stop NAME` process, for every --cli-every'th stop

and the daemon's CPU (utime + stime) over all its stops, per stop. With --base DIR (a checkout
of another commit, its C modules in place) a daemon of that checkout (PYTHONPATH=DIR, its CLI
too) runs beside this tree's, on its own N workers, and the rounds alternate between the two:
a before/after measured in one run, on the same load. --this DIR runs a snapshot of this tree
the same way (so that edits during the run do not count).

    git -C /work/main archive main | tar -x -C /tmp/base; cp supervisor/*.so /tmp/base/supervisor/
    cp worker/*.so /tmp/base/worker/
    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_stop_single.py --base /tmp/base
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import ExitStack
from typing import Any

from harness import PV_BIN, Pyvisor, Run, cpu_seconds, header, ms, parse_args, say, summary
from mass import pyvisor_workers


class Side:
    def __init__(self, label: str, pythonpath: str | None, d: Pyvisor) -> None:
        self.label, self.pythonpath, self.d = label, pythonpath, d
        self.raw: list[float] = []
        self.cli: list[float] = []
        self.cpu = 0.0
        self.stops = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env

    def start(self, n: int) -> None:
        saved = os.environ.pop("PYTHONPATH", None)
        if self.pythonpath:
            os.environ["PYTHONPATH"] = self.pythonpath       # Run.env() copies os.environ
        try:
            self.d.start()
        finally:
            os.environ.pop("PYTHONPATH", None)
            if saved is not None:
                os.environ["PYTHONPATH"] = saved
        self.d.wait_all_running(n, 600, 0.2)

    def round(self, n: int, stops: int, cli_every: int) -> None:
        """Stop instances one at a time (at most n), then start all again."""
        d = self.d
        cpu0 = cpu_seconds(d.pid)
        for name in d.names[:stops]:
            self.stops += 1
            t0 = time.monotonic()
            if self.stops % cli_every == 0:
                r = subprocess.run([str(PV_BIN / "supervisorctl"), "-c", str(d.config),
                                    "stop", name], env=self.env(), capture_output=True,
                                   stdin=subprocess.DEVNULL, check=False)
                self.cli.append(ms(time.monotonic() - t0))
                if r.returncode != 0:
                    raise RuntimeError(f"stop {name}: {r.returncode} {r.stderr!r}")
            else:
                reply: dict[str, Any] = d.request("stop", [name], {}, timeout=30)
                self.raw.append(ms(time.monotonic() - t0))
                if reply.get("ok") is False or reply.get("error"):
                    raise RuntimeError(f"stop {name}: {reply}")
        self.cpu += cpu_seconds(d.pid) - cpu0
        d.request("start", ["all"], {}, timeout=300)
        d.wait_all_running(n, 600, 0.2)


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1000, quick_n=100, extra=lambda ap: (
        ap.add_argument("--stops", type=int, default=10000),
        ap.add_argument("--cli-every", type=int, default=10),
        ap.add_argument("--base", help="a checkout to compare with (PYTHONPATH=BASE)"),
        ap.add_argument("--this", help="a snapshot of this tree to run instead of the tree"),
        ap.add_argument("--other", action="append", default=[], metavar="DIR",
                        help="one more checkout to run beside them (repeatable)")))
    n = a.workers
    stops = 1000 if a.quick and a.stops == 10000 else a.stops
    header("single stops in a row", "one-instance stop: raw request and whole CLI, daemon "
           "CPU per stop", "after ~ before", n)
    with ExitStack() as stack:
        sides = []
        wanted = [("this tree", os.path.abspath(a.this) if a.this else None)]
        if a.base:
            wanted.insert(0, (f"base {a.base}", os.path.abspath(a.base)))
        wanted += [(f"other {o}", os.path.abspath(o)) for o in a.other]
        for i, (label, path) in enumerate(wanted):
            run = stack.enter_context(Run(f"stop-single-{i}"))
            side = Side(label, path, run.pyvisor(pyvisor_workers("plain", n)))
            side.start(n)
            sides.append(side)
        say(f"booted {len(sides)} daemon(s) of {n} workers; {stops} stops each")
        rnd = 0
        while any(s.stops < stops for s in sides):
            order = sides[rnd % len(sides):] + sides[:rnd % len(sides)]   # rotated
            for s in order:
                s.round(n, min(n, stops - s.stops), a.cli_every)
            rnd += 1
            say(f"round {rnd}: " + ", ".join(f"{s.label} {s.stops}" for s in sides))
        for s in sides:
            say(f"{s.label:>24s} raw stop: {summary(s.raw)}")
            say(f"{s.label:>24s} cli stop: {summary(s.cli)}")
            say(f"{s.label:>24s} daemon CPU per stop: {1e6 * s.cpu / max(1, s.stops):.0f} us "
                f"({s.stops} stops)")


if __name__ == "__main__":
    main()
