"""Demo worker: ``python -m worker [--name /pyvisor-x.web:0] [--unit-ms 50] [--units N]``.

Attaches to its control block ($PYVISOR_BLOCK, or --name), reports ready, then does units
of work (a sleep standing in for real work), publishing a heartbeat and the work count
after each, and checks should_stop between units: a STOP_GRACEFUL ends the loop at the
next unit boundary and the process exits 0. SIGTERM does the same (the
handler only sets a flag, so a unit is never cut in half).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from worker.api import Worker, WorkerError
from worker.block import CMD_NAMES, BlockError


def _say(msg: str) -> None:
    print(f"worker: {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n")[0])
    ap.add_argument("--name", help="control block name (default: $PYVISOR_BLOCK)")
    ap.add_argument("--unit-ms", type=float, default=50.0, help="length of a unit of work")
    ap.add_argument("--units", type=int, default=0, help="stop after N units (0: never)")
    ap.add_argument("--fail", action="store_true", help="raise an error after the units")
    args = ap.parse_args(argv)

    terminated: list[int] = []

    def on_term(signum: int, frame: FrameType | None) -> None:
        terminated.append(signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        w = Worker(name=args.name)
    except (WorkerError, BlockError, OSError) as e:
        print(f"python -m worker: {e}", file=sys.stderr)
        return 2
    with w:
        _say(f"attached to {w.name} as {w.instance}")
        w.ready()
        _say("ready")
        done = 0
        while not w.should_stop and not terminated:
            if args.units and done >= args.units:
                break
            with w.busy():
                time.sleep(args.unit_ms / 1000.0)  # the "work"
            done += 1
            w.heartbeat()
            w.add_work()
            _say(f"unit {done} done")
        if terminated:
            _say(f"SIGTERM: stopping at a unit boundary after {done} units")
        elif w.should_stop:
            cmd = CMD_NAMES.get(w.stop_command, str(w.stop_command))
            _say(f"{cmd} received: stopping at a unit boundary after {done} units")
        else:
            _say(f"finished {done} units")
        if args.fail:
            raise RuntimeError("--fail given: failing on purpose")
        _say("exiting 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
