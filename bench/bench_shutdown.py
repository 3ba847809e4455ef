"""Bench 6: time to stop N cooperative workers.

--kind lib (default): the Python library worker (bench/workers/pvb_worker.py); --kind c: the
C worker bench/workers/coop.c (worker/ctlblock.h), which has no interpreter to start or tear
down. Under pyvisor both sleep on the command word and leave on STOP_GRACEFUL; under
supervisord the same program blocks in sigwait and leaves on SIGTERM. Two measurements per supervisor, each from a freshly booted daemon:
  stop all: `supervisorctl stop --graceful all` (supervisord: `stop all`) -> every worker gone
            (pidfds) and -> the command returned;
  shutdown: `supervisorctl shutdown` -> every worker gone and the daemon exited.
"""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time

from harness import CLK_TCK, Pyvisor, Run, cpu_seconds, header, ms, parse_args, say, wait_gone
from mass import KINDS, boot, make, sides


def child_cpu(pid: int) -> float:
    """cutime + cstime of pid: CPU of the children it has reaped (their whole lives)."""
    stat = open(f"/proc/{pid}/stat").read()
    f = stat[stat.rindex(")") + 2:].split()
    return (int(f[13]) + int(f[14])) / CLK_TCK


def watch_acks(prefix: str, names: list[str], out: dict[str, float]) -> threading.Thread:
    """pyvisor: poll each block's ack word (0x080); record when all show STOPPING/EXITED (or
    the block is gone): the daemon has posted every STOP_GRACEFUL and every worker woke."""
    fds = []
    for n in names:
        try:
            fds.append(os.open(f"/dev/shm/{prefix}.{n}", os.O_RDONLY))
        except OSError:
            pass

    def loop() -> None:
        try:
            end = time.monotonic() + 300
            pending = list(fds)
            while pending and time.monotonic() < end:
                left = []
                for fd in pending:
                    try:
                        state = struct.unpack("<I", os.pread(fd, 4, 0x80))[0] & 0xFF
                    except (OSError, struct.error):
                        continue
                    if state < 4:
                        left.append(fd)
                pending = left
                if pending:
                    time.sleep(0.002)
            out["acked"] = time.monotonic()
        finally:
            for fd in fds:
                os.close(fd)
    t = threading.Thread(target=loop, daemon=True)
    return t


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1000, extra=lambda ap: (
        ap.add_argument("--kind", default="lib", choices=KINDS)))
    header("time to stop N cooperative workers", "stop all / shutdown -> all workers gone",
           "<= 1 s (pyvisor)", a.workers)
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
                acks: dict[str, float] = {}
                watcher = watch_acks(run.prefix, d.names, acks) if isinstance(d, Pyvisor) \
                    else None
                cpu0, ccpu0 = cpu_seconds(d.pid), child_cpu(d.pid)
                t0 = time.monotonic()
                if watcher:
                    watcher.start()
                proc = subprocess.Popen(d.ctl_argv(*args), stdout=subprocess.DEVNULL,
                                        env=run.env(), cwd=d.dir)
                t_gone = wait_gone(pids, 300)
                proc.wait(300)
                t_ret = time.monotonic()
                try:
                    cpu = f"daemon CPU {cpu_seconds(d.pid) - cpu0:.2f} s, workers' CPU " \
                          f"(whole lives, reaped) {child_cpu(d.pid) - ccpu0:.1f} s; "
                except OSError:
                    cpu = ""
                extra = ""
                if watcher:
                    watcher.join(60)
                    extra += f", all acked STOPPING {ms(acks.get('acked', t0) - t0):.0f} ms"
                if what == "shutdown" and d.proc is not None:
                    d.proc.wait(60)
                    extra += f", daemon exited {ms(time.monotonic() - t0):.0f} ms"
                say(f"{side:12s} {what:9s} {len(pids)} workers gone in "
                    f"{ms(t_gone - t0):.0f} ms, command returned {ms(t_ret - t0):.0f} ms"
                    f"{extra}  ({cpu}boot was {bs:.1f} s)")


if __name__ == "__main__":
    main()
