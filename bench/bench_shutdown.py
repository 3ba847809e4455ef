"""Bench 6: time to stop N cooperative workers.

Library workers (bench/workers/pvb_worker.py): under pyvisor they block in wait_for_stop and
leave on STOP_GRACEFUL; under supervisord the same script blocks in sigwait and leaves on
SIGTERM. Two measurements per supervisor, each from a freshly booted daemon:
  stop all: `supervisorctl stop --graceful all` (supervisord: `stop all`) -> every worker gone
            (pidfds) and -> the command returned;
  shutdown: `supervisorctl shutdown` -> every worker gone and the daemon exited.
"""

from __future__ import annotations

import subprocess
import time

from harness import Pyvisor, Run, header, ms, parse_args, say, wait_gone
from mass import boot, make, sides


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1000, extra=lambda ap: (
        ap.add_argument("--kind", default="lib")))
    header("time to stop N cooperative workers", "stop all / shutdown -> all workers gone",
           "<= 1 s for library workers (pyvisor)", a.workers)
    for side in sides(a.only):
        for what in ("stop all", "shutdown"):
            with Run("shutdown") as run:
                d = make(run, side, a.kind, a.workers)
                bs = boot(d, a.workers, timeout=900, step=0.5)
                time.sleep(2)
                pids = [p for _, p in (d.states() or {}).values() if p]
                if what == "stop all":
                    args = ["stop", "--graceful", "all"] if isinstance(d, Pyvisor) \
                        else ["stop", "all"]
                else:
                    args = ["shutdown"]
                t0 = time.monotonic()
                proc = subprocess.Popen(d.ctl_argv(*args), stdout=subprocess.DEVNULL,
                                        env=run.env(), cwd=d.dir)
                t_gone = wait_gone(pids, 300)
                proc.wait(300)
                t_ret = time.monotonic()
                extra = ""
                if what == "shutdown" and d.proc is not None:
                    d.proc.wait(60)
                    extra = f", daemon exited {ms(time.monotonic() - t0):.0f} ms"
                say(f"{side:12s} {what:9s} {len(pids)} workers gone in "
                    f"{ms(t_gone - t0):.0f} ms, command returned {ms(t_ret - t0):.0f} ms"
                    f"{extra}  (boot was {bs:.1f} s)")


if __name__ == "__main__":
    main()
