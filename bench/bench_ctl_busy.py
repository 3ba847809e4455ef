"""Bench 7: supervisorctl answer time while N workers start.

Start the daemon with N plain workers (pyvisor start_seconds 1, supervisord startsecs=1, so
timers fire during the window too) and, from the moment its socket answers until all N are
RUNNING, call `supervisorctl pid NAME:0` (CLI, whole process) back to back, and a raw
one-instance status request in between. p50/p99 of each.
"""

from __future__ import annotations

import os
import time

from harness import Pyvisor, Run, Supervisord, header, ms, parse_args, pct, say, summary
from mass import pyvisor_workers, sides, supervisord_programs


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1000)
    header("supervisorctl answer time during mass start",
           "`pid NAME:0` CLI wall time and raw one-instance status, while N workers start",
           "<= 100 ms (pyvisor)", a.workers)
    for side in sides(a.only):
        with Run("ctlbusy") as run:
            if side == "pyvisor":
                d: Pyvisor | Supervisord = run.pyvisor(
                    pyvisor_workers("plain", a.workers, start_seconds=1))
                first = d.names[0]
                cli_args: tuple[str, ...] = ("pid", first)
            else:
                d = run.supervisord(supervisord_programs("plain", a.workers, startsecs=1))
                first = d.names[0]
                cli_args = ("pid", first)
            t_start = d.start()
            while not os.path.exists(d.sock) and time.monotonic() - t_start < 30:
                time.sleep(0.002)
            cli: list[float] = []
            raw: list[float] = []
            done = False
            i = 0
            while not done and time.monotonic() - t_start < 600:
                _rc, _out, wall = d.ctl(*cli_args)
                cli.append(ms(wall))
                t0 = time.monotonic()
                try:
                    if isinstance(d, Pyvisor):
                        d.request("status", [first], {})
                    else:
                        d.rpc().supervisor.getProcessInfo(first)
                    raw.append(ms(time.monotonic() - t0))
                except OSError:
                    pass
                i += 1
                if i % 5 == 0:
                    done = d.count_running() >= a.workers
            span = time.monotonic() - t_start
            say(f"{side:12s} window {span:.1f} s (start -> all RUNNING)")
            say(f"{side:12s} cli pid    {summary(cli)}")
            say(f"{side:12s} raw status {summary(raw)}")
            _ = pct


if __name__ == "__main__":
    main()
