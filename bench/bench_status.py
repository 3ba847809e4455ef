"""Bench 4: `supervisorctl status` wall time at N workers (median of 7), both supervisors.

N plain workers (`sleep 100000`), all RUNNING. Times the whole CLI process (`status`, and
pyvisor's `status --json`), plus one raw request on the socket (pyvisor JSON status;
supervisord XML-RPC getAllProcessInfo) to separate CLI start-up from the daemon's work.
"""

from __future__ import annotations

import time

from harness import Pyvisor, Run, Supervisord, header, median, ms, parse_args, say, summary
from mass import boot, make, sides


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1000, extra=lambda ap: (
        ap.add_argument("--reps", type=int, default=7)))
    header("supervisorctl status wall time", f"whole CLI process, median of {a.reps}",
           "<= 150 ms (pyvisor)", a.workers)
    res: dict[str, list[float]] = {}
    for side in sides(a.only):
        with Run("status") as run:
            d = make(run, side, "plain", a.workers)
            boot(d, a.workers)
            time.sleep(1)
            variants: list[tuple[str, tuple[str, ...]]] = [("status", ("status",))]
            if isinstance(d, Pyvisor):
                variants.append(("status --json", ("status", "--json")))
            for label, args in variants:
                xs = []
                for _ in range(a.reps):
                    rc, out, wall = d.ctl(*args)
                    lines = len(out.splitlines())
                    xs.append(ms(wall))
                res[f"{side} cli {label}"] = xs
                say(f"{side:12s} cli {label:14s} median {median(xs):7.1f} ms  "
                    f"(rc={rc}, {lines} lines)  {summary(xs)}")
            raw = []
            for _ in range(a.reps):
                t0 = time.monotonic()
                if isinstance(d, Pyvisor):
                    d.request("status", ["all"], {})
                else:
                    assert isinstance(d, Supervisord)
                    d.rpc().supervisor.getAllProcessInfo()
                raw.append(ms(time.monotonic() - t0))
            res[f"{side} raw"] = raw
            say(f"{side:12s} raw socket status    median {median(raw):7.1f} ms  {summary(raw)}")
            # CLI start-up alone: a request that does almost nothing
            xs = [ms(d.ctl("pid")[2]) for _ in range(a.reps)]
            say(f"{side:12s} cli pid (start-up)   median {median(xs):7.1f} ms")
    if "pyvisor cli status" in res and "supervisord cli status" in res:
        say(f"ratio supervisord/pyvisor cli status median: "
            f"{median(res['supervisord cli status']) / median(res['pyvisor cli status']):.2f}x")


if __name__ == "__main__":
    main()
