"""Bench: worker output through the daemon to its own stdout (pyvisor `stdout: daemon`,
supervisord `stdout_logfile=/dev/stdout`), both supervisors.

N workers run `yes` (full speed, forever) with their stdout going to the daemon's stdout,
which is a file here. Over a window: the bytes per second that reach the daemon's stdout,
the daemon's CPU (utime+stime, % of one core), and the latency of a raw status request on
the control socket during the flood (pyvisor JSON status; supervisord getAllProcessInfo):
median and p99. A daemon that starves its loop shows it in the last figure.
"""

from __future__ import annotations

import time

from harness import (
    Pyvisor,
    Run,
    Supervisord,
    cpu_seconds,
    header,
    median,
    ms,
    parse_args,
    pct,
    say,
)
from mass import sides


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=4, quick_n=2, extra=lambda ap: (
        ap.add_argument("--window", type=float, default=3.0)))
    header("worker output to the daemon's stdout", f"N x `yes`, window {a.window:g} s",
           "status p99 stays low (the loop is not starved)", a.workers)
    for side in [s for s in sides(a.only) if s != "pyvisor-nocg"]:
        with Run("console") as run:
            d: Pyvisor | Supervisord
            if side == "pyvisor":
                d = run.pyvisor({"flood": {"command": ["yes"], "numprocs": a.workers,
                                           "start_seconds": 0, "stdout": "daemon"}})
            else:
                d = run.supervisord({"flood": {
                    "command": "yes", "numprocs": a.workers, "startsecs": 0,
                    "stdout_logfile": "/dev/stdout", "stdout_logfile_maxbytes": 0}})
            d.start()
            d.wait_all_running(a.workers, 60)
            time.sleep(0.5)
            size0, cpu0, t0 = d.log.stat().st_size, cpu_seconds(d.pid), time.monotonic()
            lat = []
            while time.monotonic() - t0 < a.window:
                s0 = time.monotonic()
                if isinstance(d, Pyvisor):
                    d.request("status", ["all"], {})
                else:
                    d.rpc().supervisor.getAllProcessInfo()
                lat.append(ms(time.monotonic() - s0))
                time.sleep(0.05)
            took = time.monotonic() - t0
            size1, cpu1 = d.log.stat().st_size, cpu_seconds(d.pid)
            say(f"{side:12s} {(size1 - size0) / took / 1e6:8.1f} MB/s to the daemon's stdout, "
                f"daemon CPU {100 * (cpu1 - cpu0) / took:5.1f} % of a core, status "
                f"median {median(lat):6.1f} ms p99 {pct(lat, 99):7.1f} ms ({len(lat)} requests)")
            d.terminate()
            d.log.unlink()            # gigabytes of 'y'


if __name__ == "__main__":
    main()
