"""`supervisorctl stop all` at N plain sleep workers: command -> every worker gone, -> returned.

    flock /tmp/pv-bench.lock .venv/bin/python bench/bench_stopall.py --workers 10000 --reps 3
        [--spy] [--pythonpath OTHER_CHECKOUT | --base BASE_CHECKOUT] [--no-cgroups]

One daemon with one worker of N `sleep` instances is booted and awaited until all RUNNING. Each
rep: the PIDs are read, a pidfd opened on each (an epoll set in this process), then
`supervisorctl stop all` is run and timed until every pidfd is readable (every worker has
exited: the bare cost of the signals and the kernel's exits) and until the command returns
(the daemon has reaped and booked every exit and answered); the daemon's CPU seconds over the
stop are printed beside. Then `start all` (raw request, waited for) and the next rep.
--kill-bare: the same N sleeps spawned by this process, one killpg SIGTERM each, all reaped
(the kernel's floor, measured in the same run). --spy: py-spy samples the daemon during the
first stop (top functions printed). --pythonpath: the daemon and CLI import supervisor from
another checkout (its C modules compiled in place). --base CHECKOUT: before/after in one
run: per rep a fresh daemon from the checkout and one from this tree, in alternating order,
each booted and stopped once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from harness import PV_BIN, Pyvisor, Run, cpu_seconds, median, say
from mass import SLEEP, pyvisor_workers
from profile_daemon import spy, stop_spy, summarise

from supervisor.runtime.cgroups import cgroup2_mount


def _pidfds(pids: list[int]) -> tuple[select.epoll, list[int]]:
    ep = select.epoll()
    fds = []
    for p in pids:
        try:
            fd = os.pidfd_open(p)
        except ProcessLookupError:
            continue
        fds.append(fd)
        ep.register(fd, select.EPOLLIN)
    return ep, fds


def _wait_all(ep: select.epoll, left: int, timeout: float) -> float:
    end = time.monotonic() + timeout
    while left:
        ev = ep.poll(max(0.0, end - time.monotonic()), maxevents=4096)
        if not ev:
            raise TimeoutError(f"{left} workers still alive after {timeout:g} s")
        for fd, _ in ev:
            ep.unregister(fd)
            left -= 1
    return time.monotonic()


def _left(d: Pyvisor) -> tuple[int, int, int]:
    """What the stopped instances could leak: (shm names of the run's prefix, instance
    cgroups under the run's cgroup parent, pidfds the daemon holds)."""
    prefix = d.run.prefix
    shm = sum(1 for n in os.listdir("/dev/shm") if n.startswith(prefix + "."))
    cgs = 0
    mount = cgroup2_mount()
    base = os.path.join(mount, prefix) if mount else ""
    if base and os.path.isdir(base):
        cgs = sum(1 for e in os.scandir(base) if e.is_dir(follow_symlinks=False))
    pidfds = 0
    fd_dir = f"/proc/{d.pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            if os.readlink(f"{fd_dir}/{fd}") == "anon_inode:[pidfd]":
                pidfds += 1
    return shm, cgs, pidfds


def stop_once(d: Pyvisor, spy_out: Path | None) -> tuple[float, float, float]:
    """(all gone, returned, daemon CPU) in seconds for one `supervisorctl stop all`; then
    what is left right after the reply (shm names, cgroups, pidfds) and when the instance
    cgroups are all removed (they may be removed after the reply), printed."""
    st = d.states() or {}
    pids = [p for s, p in st.values() if s == "RUNNING" and p]
    ep, fds = _pidfds(pids)
    sp = spy(d.pid, spy_out, 500) if spy_out is not None else None
    try:
        cpu0 = cpu_seconds(d.pid)
        t0 = time.monotonic()
        proc = subprocess.Popen(d.ctl_argv("stop", "all"), env=d.run.env(), cwd=d.dir,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        gone = _wait_all(ep, len(fds), 120) - t0
        _out, err = proc.communicate(timeout=300)
        returned = time.monotonic() - t0
        cpu = cpu_seconds(d.pid) - cpu0
        if proc.returncode != 0:
            say(f"stop all exited {proc.returncode}: {err.decode(errors='replace')[:300]}")
        shm, cgs, pidfds = _left(d)
        while _left(d)[1] and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        say(f"    after the reply: {shm} shm names, {cgs} instance cgroups, {pidfds} pidfds "
            f"left; cgroups all removed {time.monotonic() - t0:.2f} s after the command")
    finally:
        if sp is not None:
            stop_spy(sp)
        ep.close()
        for fd in fds:
            os.close(fd)
    return gone, returned, cpu


def kill_bare(n: int) -> tuple[float, float]:
    """N sleeps spawned here, each in its own session: (killpg of all -> all exited, -> all
    reaped) in seconds."""
    pids = [os.posix_spawn(SLEEP, [SLEEP, "100000"], os.environ, setsid=True) for _ in range(n)]
    ep, fds = _pidfds(pids)
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        for p in pids:
            os.killpg(p, signal.SIGTERM)
        gone = _wait_all(ep, len(fds), 60) - t0
        for p in pids:
            os.waitpid(p, 0)
        return gone, time.monotonic() - t0
    finally:
        ep.close()
        for fd in fds:
            os.close(fd)


def before_after(n: int, reps: int, base: str, cgroups: bool) -> None:
    """Per rep, a fresh daemon of N workers from each side, in alternating order (base first
    in odd reps), each stopped once; medians per side."""
    sides = {"base": str(Path(base).resolve()), "this": None}
    rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in sides}
    say(f"stop all at {n} plain sleep workers, base {sides['base']} vs this tree, "
        f"{reps} reps, load {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f}")
    for rep in range(reps):
        order = ["base", "this"] if rep % 2 == 0 else ["this", "base"]
        for side in order:
            with Run("stopall") as run:
                path = sides[side]
                if path is not None:
                    plain = run.env
                    run.env = lambda p=path, e=plain: {**e(), "PYTHONPATH": p}
                d = run.pyvisor(pyvisor_workers("plain", n), cgroups=cgroups)
                t0 = d.start()
                d.wait_all_running(n, 300, 0.5)
                boot = time.monotonic() - t0
                time.sleep(1)
                load = os.getloadavg()[0]
                g, r, c = stop_once(d, None)
                rows[side].append((g, r, c))
                say(f"  rep {rep + 1} {side}: boot {boot:.1f} s; stop all -> all gone {g:.2f} s, "
                    f"returned {r:.2f} s, daemon CPU {c:.2f} s (load {load:.1f})")
    for side, got in rows.items():
        gone, ret, cpu = (median([x[k] for x in got]) for k in range(3))
        say(f"{side}: median of {len(got)}: all gone {gone:.2f} s, returned {ret:.2f} s, "
            f"daemon CPU {cpu:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--spy", action="store_true")
    ap.add_argument("--pythonpath", help="a checkout whose supervisor/ the daemon imports")
    ap.add_argument("--no-cgroups", action="store_true")
    ap.add_argument("--kill-bare", action="store_true")
    ap.add_argument("--keep-log", action="store_true", help="copy the daemon log to /tmp")
    ap.add_argument("--base", help="before/after: a checkout of the commit before (its C "
                    "modules compiled in place); each rep boots it and this tree in turn")
    a = ap.parse_args()
    n = a.workers
    if a.base:
        before_after(n, a.reps, a.base, not a.no_cgroups)
        return
    with Run("stopall") as run:
        if a.pythonpath:
            plain = run.env
            run.env = lambda: {**plain(), "PYTHONPATH": str(Path(a.pythonpath).resolve())}
        say(f"stop all at {n} plain sleep workers, load {os.getloadavg()[0]:.1f} "
            f"{os.getloadavg()[1]:.1f}, daemon from {a.pythonpath or PV_BIN.parent}")
        if a.kill_bare:
            g, r = kill_bare(n)
            say(f"bare killpg SIGTERM of {n} -> all exited / all reaped: {g:.2f} / {r:.2f} s")
        d = run.pyvisor(pyvisor_workers("plain", n), cgroups=not a.no_cgroups)
        t0 = d.start()
        d.wait_all_running(n, 300, 0.5)
        say(f"boot -> all RUNNING: {time.monotonic() - t0:.1f} s")
        rows = []
        for rep in range(a.reps):
            time.sleep(1)
            out = run.dir / "spy.txt" if a.spy and rep == 0 else None
            g, r, c = stop_once(d, out)
            rows.append((g, r, c))
            say(f"  rep {rep + 1}: stop all -> all gone {g:.2f} s, returned {r:.2f} s, "
                f"daemon CPU {c:.2f} s (load {os.getloadavg()[0]:.1f})")
            if out is not None:
                summarise(out)
                keep = Path(f"/tmp/stopall-spy-{os.getpid()}.txt")
                keep.write_bytes(out.read_bytes())
                say(f"raw py-spy stacks kept in {keep}")
            if rep + 1 < a.reps:
                d.request("start", ["all"], {"wait": True}, timeout=300)
                d.wait_all_running(n, 300, 0.5)
        gone, ret, cpu = (median([x[k] for x in rows]) for k in range(3))
        say(f"median of {len(rows)}: all gone {gone:.2f} s, returned {ret:.2f} s, "
            f"daemon CPU {cpu:.2f} s")
        say("daemon log tail:\n" + d.log_tail(3))
        if a.keep_log:
            keep = Path(f"/tmp/stopall-daemon-{os.getpid()}.log")
            keep.write_bytes(d.log.read_bytes())
            say(f"daemon log kept in {keep}")


if __name__ == "__main__":
    main()
