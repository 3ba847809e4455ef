"""Bench 2: `stop --graceful` latency, command -> worker gone.

One library worker blocked in wait_for_stop() (bench/workers/pvb_worker.py). Each run: note
the worker's PID, open a pidfd on it, issue the stop, and time until the pidfd is readable
(worker gone) and until the command returns. Two ways of issuing it:
  cli: `supervisorctl stop --graceful NAME` (includes the CLI's own start-up), and
  raw: one request on the control socket (pyvisor JSON; supervisord XML-RPC stopProcess).
supervisord: the same Python worker blocks in sigwait(SIGTERM); `supervisorctl stop` sends
SIGTERM. Between runs the worker is started again and awaited.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from typing import Any

from harness import (
    PV_BIN,
    PY_WORKER,
    Daemon,
    Pyvisor,
    Run,
    Supervisord,
    header,
    ms,
    parse_args,
    pct,
    say,
    summary,
    wait_until,
)


def _gone_after(pid: int, issue: Any) -> tuple[float, float]:
    """Issue the stop (a callable that returns when the command returned); -> (gone, returned)
    in ms from the moment of issuing."""
    fd = os.pidfd_open(pid)
    try:
        t0 = time.monotonic()
        proc = issue()
        gone = None
        returned = None
        p = select.poll()
        p.register(fd, select.POLLIN)
        end = t0 + 30
        while gone is None or returned is None:
            if gone is None and p.poll(1):
                gone = time.monotonic()
            if returned is None and (proc is None or proc.poll() is not None):
                returned = time.monotonic()
            if time.monotonic() > end:
                raise TimeoutError(f"pid {pid} not gone/returned within 30 s")
        return ms(gone - t0), ms(returned - t0)
    finally:
        os.close(fd)


def _pid(d: Daemon, name: str) -> int:
    def get() -> int:
        st = d.states() or {}
        s, pid = st.get(name, ("?", 0))
        return pid if s == "RUNNING" and pid else 0
    return int(wait_until(get, 30, f"{name} RUNNING"))


def measure(d: Daemon, runs: int) -> dict[str, list[float]]:
    d.start()
    name = d.names[0]
    d.wait_all_running(1, 60)
    out: dict[str, list[float]] = {"cli gone": [], "cli returned": [], "raw gone": [],
                                   "raw returned": []}
    for i in range(runs):
        for how in ("cli", "raw"):
            pid = _pid(d, name)
            time.sleep(0.05)
            if how == "cli":
                args = ["stop", "--graceful", name] if isinstance(d, Pyvisor) else ["stop", name]
                argv = d.ctl_argv(*args)
                issue = lambda: subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                 env=d.run.env(), cwd=d.dir)
            elif isinstance(d, Pyvisor):
                issue = lambda: d.request("stop", [name], {"graceful": True, "wait": True}) and None
            else:
                assert isinstance(d, Supervisord)
                issue = lambda: d.rpc().supervisor.stopProcess(name, True) and None
            gone, returned = _gone_after(pid, issue)
            if how == "raw":
                returned = max(returned, gone)
            out[f"{how} gone"].append(gone)
            out[f"{how} returned"].append(returned)
            if isinstance(d, Pyvisor):
                d.request("start", [name], {"wait": True})
            else:
                assert isinstance(d, Supervisord)
                d.rpc().supervisor.startProcess(name, True)
    d.terminate()
    return out


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1, quick_n=1, extra=lambda ap: (
        ap.add_argument("--runs", type=int, default=30)))
    runs = 8 if a.quick else a.runs
    header("stop --graceful latency", f"command -> worker gone, {runs} runs per way",
           "(none given; lower is better)", 1)
    py = str(PV_BIN / "python3")
    res: dict[str, dict[str, list[float]]] = {}
    with Run("stop") as run:
        if a.only in (None, "pyvisor"):
            res["pyvisor"] = measure(run.pyvisor({"lib": {"command": [py, PY_WORKER],
                                                          "graceful_timeout": 10}}), runs)
        if a.only in (None, "supervisord"):
            res["supervisord"] = measure(run.supervisord({"lib": {
                "command": f"{py} {PY_WORKER}", "startsecs": 0, "stopwaitsecs": 10}}), runs)
    for k, v in res.items():
        for m, xs in v.items():
            say(f"{k:12s} {m:13s} {summary(xs)}")
    if len(res) == 2:
        for m in ("cli gone", "raw gone"):
            say(f"ratio supervisord/pyvisor p50 {m}: "
                f"{pct(res['supervisord'][m], 50) / pct(res['pyvisor'][m], 50):.1f}x")


if __name__ == "__main__":
    main()
