"""Bench worker: ``pvb_worker.py [FIFO]``.

Under pyvisor ($PYVISOR_BLOCK set): attach, ready(), report, block in wait_for_stop(), exit 0
(the `with` block records the exit). Elsewhere (supervisord): report, block in sigwait until
SIGTERM/SIGINT, exit 0 -- the cooperative worker supervisord can stop.
The report is "pid CLOCK_MONOTONIC-ns\n" written to FIFO (optional) once the worker is ready.
"""

from __future__ import annotations

import os
import sys
import time


def report(path: str | None) -> None:
    if not path:
        return
    line = f"{os.getpid()} {time.monotonic_ns()}\n".encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)


def main() -> int:
    fifo = sys.argv[1] if len(sys.argv) > 1 else None
    if os.environ.get("PYVISOR_BLOCK"):
        from worker import Worker

        with Worker() as w:
            w.ready()
            report(fifo)
            w.wait_for_stop()
        return 0
    import signal  # here: the pyvisor path does not need it, and every module costs at exit

    sigs = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    report(fifo)
    signal.sigwait(sigs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
