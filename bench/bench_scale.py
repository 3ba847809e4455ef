"""Bench 9: 1,000 and 10,000 plain workers on one host, next to the kernel's own pace.

For each N (default 1000 and 10000): a bare `os.posix_spawn` loop of N `sleep` processes (the
reference, measured in the same run; once with output to /dev/null, once opening two fresh
log files per process on the same filesystem as the daemon's log_dir, as pyvisor does), then
one pyvisor daemon with one worker `numprocs: N` (`sleep 100000`, start_seconds 0), started
with a soft RLIMIT_NOFILE of 1024 (systemd's default for services) so that it must raise its
own. Measured, in this order:

  boot        daemon start -> all N alive (the last instance's "spawned pid" line in the
              daemon's log, read every 20 ms: no socket traffic and no /proc/PID/children
              read, both of which slow the daemon), then -> all N RUNNING
  fds         the daemon's open fds (pidfds, /dev/shm objects, all), FATAL instances, the
              RLIMIT_NOFILE of the daemon and of a worker
  idle        the daemon's CPU over --idle seconds, and its VmRSS
  status      `supervisorctl status` (whole CLI), the same request on the raw socket, and the
              CLI's `pid` (start-up alone); median of --reps
  adoption    SIGKILL the daemon, start it again: -> first answer, -> all N verified RUNNING
              adopted (one status), PIDs changed
  stop all    `supervisorctl stop all` -> returned, -> every worker gone (pidfds)
  start all   `supervisorctl start all` (log files exist now) while `supervisorctl pid W:0`
              runs every 50 ms (or back to back when it takes longer): the start's duration
              and the probes' p50/p99

Then supervisord 4.3.0 with --sd-workers (default 2000) programs: boot -> all alive, idle
CPU and RSS, `supervisorctl status`, `stop all`; with a bare loop at that N beside it.

    .venv/bin/python bench/bench_scale.py                    # 1k and 10k, supervisord at 2k
    .venv/bin/python bench/bench_scale.py --sizes 1000 --no-sd   # iterate
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from harness import (
    Pyvisor,
    Run,
    Supervisord,
    children,
    cpu_seconds,
    header,
    ms,
    pct,
    rss_kb,
    say,
    wait_gone,
    wait_until,
)
from mass import SLEEP, pyvisor_workers, supervisord_programs

# -- the reference: a bare posix_spawn loop ---------------------------------------------------

def bare_loop(run: Run, n: int, logs: bool, stop: list[float] | None = None) -> float:
    """Seconds to posix_spawn n `sleep` processes (new sessions), optionally each with two new
    log files (created O_EXCL in a fresh directory beside the daemons' ones). ``stop``: gets
    the seconds from SIGTERM to each of them (killpg, as a supervisor does) to all reaped."""
    env = run.env()
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    logdir = run.dir / f"bare-logs-{n}-{time.monotonic_ns()}"
    logdir.mkdir()
    dfd = os.open(logdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    pids: list[int] = []
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        t0 = time.monotonic()
        for i in range(n):
            if logs:
                out = os.open(f"w-{i}.out.log", flags, 0o640, dir_fd=dfd)
                err = os.open(f"w-{i}.err.log", flags, 0o640, dir_fd=dfd)
            else:
                out = err = null
            try:
                pids.append(os.posix_spawn(SLEEP, [SLEEP, "100000"], env, setsid=True,
                                           file_actions=[(os.POSIX_SPAWN_DUP2, null, 0),
                                                         (os.POSIX_SPAWN_DUP2, out, 1),
                                                         (os.POSIX_SPAWN_DUP2, err, 2)]))
            finally:
                if logs:
                    os.close(out)
                    os.close(err)
        dt = time.monotonic() - t0
        t0 = time.monotonic()
        for p in pids:
            os.killpg(p, signal.SIGTERM)
        for p in pids:
            os.waitpid(p, 0)
        if stop is not None:
            stop.append(time.monotonic() - t0)
        pids = []
    finally:
        for p in pids:
            os.kill(p, signal.SIGKILL)
        for p in pids:
            os.waitpid(p, 0)
        os.close(dfd)
        os.close(null)
    return dt


# -- helpers ----------------------------------------------------------------------------------

def nofile_of(pid: int) -> str:
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    return "?"


def fd_counts(pid: int) -> dict[str, int]:
    kinds = {"pidfd": 0, "shm": 0, "all": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kinds["all"] += 1
        kinds["pidfd"] += target == "anon_inode:[pidfd]"
        kinds["shm"] += target.startswith("/dev/shm/")
    return kinds


def wait_log_line(log: Path, needle: str, timeout: float) -> float:
    """time.monotonic() once the daemon's log has a line containing needle (its tail read
    every 20 ms). Used for pyvisor, which spawns in order and logs each spawn: reading the
    daemon's children from /proc instead costs the kernel O(N) per read under the tasklist
    lock that every fork needs, which slowed the very spawns being timed."""
    end = time.monotonic() + timeout
    pos = 0
    while time.monotonic() < end:
        try:
            with open(log, "rb") as f:
                f.seek(max(0, pos - len(needle)))
                chunk = f.read()
                pos = f.tell()
        except OSError:
            chunk = b""
        if needle.encode() in chunk:
            return time.monotonic()
        time.sleep(0.02)
    raise TimeoutError(f"no {needle!r} in {log} after {timeout} s")


def wait_children(pid: int, n: int, timeout: float) -> float:
    """time.monotonic() once pid has n children (polled every 20 ms)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(children(pid)) >= n:
            return time.monotonic()
        time.sleep(0.02)
    raise TimeoutError(f"{len(children(pid))} of {n} children after {timeout} s")


def idle_cpu(pid: int, seconds: float) -> float:
    """Percent of one core the process used over the window."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def timed(fn: Any, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.monotonic()
        fn()
        out.append(ms(time.monotonic() - t0))
    return out


def cli_cpu(fn: Any, reps: int) -> list[float]:
    """CPU (user + system, ms) of the CLI process fn runs, per call (RUSAGE_CHILDREN)."""
    out = []
    for _ in range(reps):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        fn()
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.append(ms(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime))
    return out


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.0f} ms" if xs else "-"


def row(figure: str, value: str) -> None:
    say(f"  {figure:<44s} {value}")


# -- pyvisor ----------------------------------------------------------------------------------

class LimitedPyvisor(Pyvisor):
    """pyvisor started with a soft RLIMIT_NOFILE of 1024 (it raises its own at start)."""

    def argv(self) -> list[str]:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        return ["prlimit", f"--nofile=1024:{hard}", "--", *super().argv()]


def bench_pyvisor(run: Run, n: int, a: argparse.Namespace, bare: float) -> dict[str, Any]:
    d = LimitedPyvisor(run, pyvisor_workers("plain", n), f"pv{n}")
    run.daemons.append(d)
    res: dict[str, Any] = {}
    t0 = d.start()
    t_alive = wait_log_line(d.log, f"plain:{n - 1} spawned pid", 900)
    res["boot_alive"] = t_alive - t0
    boot_cpu = cpu_seconds(d.pid)

    def all_running() -> list[dict[str, Any]] | None:
        st = d.status_json()
        return st if st and sum(e["state"] == "RUNNING" for e in st) >= n else None

    st = wait_until(all_running, 300, f"{n} RUNNING", 0.25)
    res["boot_running"] = time.monotonic() - t0
    res["fatal"] = sum(e["state"] == "FATAL" for e in st)
    say(f"pyvisor N={n}")
    row("boot -> all alive", f"{res['boot_alive']:.2f} s = {n / res['boot_alive']:.0f}/s "
        f"({res['boot_alive'] / bare:.2f}x the bare loop)")
    row("  the daemon's CPU until then (user+sys)", f"{boot_cpu:.2f} s")
    row("boot -> all RUNNING (status polled 4/s)", f"{res['boot_running']:.2f} s")
    time.sleep(2)
    fds = fd_counts(d.pid)
    worker_pid = next(e["pid"] for e in st if e["pid"])
    row("instances FATAL", str(res["fatal"]))
    row("daemon fds: all / pidfds / shm", f"{fds['all']} / {fds['pidfd']} / {fds['shm']}")
    row("RLIMIT_NOFILE soft/hard: daemon / worker",
        f"{nofile_of(d.pid)} / {nofile_of(worker_pid)}")
    res["cpu"] = idle_cpu(d.pid, a.idle)
    res["rss"] = rss_kb(d.pid) / 1024
    row(f"idle daemon CPU ({a.idle:g} s)", f"{res['cpu']:.3f} %")
    row("daemon VmRSS", f"{res['rss']:.1f} MB")
    cli = timed(lambda: d.ctl("status"), a.reps)
    raw = timed(lambda: d.request("status", ["all"], {}), a.reps)
    pid_cli = timed(lambda: d.ctl("pid"), a.reps)
    js = timed(lambda: d.ctl("status", "--json"), max(1, a.reps // 2))
    res["status_cli"] = statistics.median(cli)
    row("supervisorctl status (whole CLI), median", med(cli))
    row("  raw socket status / CLI `pid` alone", f"{med(raw)} / {med(pid_cli)}")
    cpu_status = cli_cpu(lambda: d.ctl("status"), a.reps)
    cpu_pid = cli_cpu(lambda: d.ctl("pid"), a.reps)
    row("  CLI CPU: status / pid; its parse+print",
        f"{med(cpu_status)} / {med(cpu_pid)}; "
        f"{statistics.median(cpu_status) - statistics.median(cpu_pid):.0f} ms")
    row("supervisorctl status --json, median", med(js))

    # adoption
    before = {e["name"]: e["pid"] for e in st}
    d.sigkill()
    t0 = d.start()

    def answers() -> bool:
        try:
            d.request("pid", [], {}, timeout=30)
            return True
        except OSError:
            return False

    wait_until(answers, 120, "the new daemon to answer", 0.005)
    t_answer = time.monotonic()
    st2 = d.status_json() or []
    t_verified = time.monotonic()
    adopted = sum(e["state"] == "RUNNING" and e["adopted"] for e in st2)
    changed = sum(1 for e in st2 if before.get(e["name"]) != e["pid"])
    res["adopt"] = t_verified - t0
    row("adopt after SIGKILL -> answers / verified",
        f"{t_answer - t0:.2f} s / {res['adopt']:.2f} s ({adopted} RUNNING adopted, "
        f"{changed} PIDs changed)")

    # stop all, then start all with CLI probes
    pids = [p for p in before.values() if p]
    t0 = time.monotonic()
    rc, _out, wall = d.ctl("stop", "all", timeout=300)
    t_gone = wait_gone(pids, 120)
    res["stop"] = t_gone - t0
    row("stop all -> returned / all gone", f"{wall:.2f} s / {res['stop']:.2f} s (exit {rc})")
    probes: list[float] = []
    done = threading.Event()
    result: dict[str, Any] = {}

    def start_all() -> None:
        t = time.monotonic()
        result["rc"] = d.ctl("start", "all", timeout=600)[0]
        result["s"] = time.monotonic() - t
        done.set()

    th = threading.Thread(target=start_all)
    th.start()
    first = "plain:0"
    while not done.is_set():        # a person or a script polling, 20 times a second at most
        _rc, _o, w = d.ctl("pid", first)
        probes.append(ms(w))
        done.wait(max(0.0, 0.05 - w))
    th.join()
    res["probe_p99"] = pct(probes, 99)
    row("start all (log files exist) -> returned", f"{result['s']:.2f} s = "
        f"{n / result['s']:.0f}/s (exit {result['rc']})")
    row("  `supervisorctl pid` during it: p50 / p99",
        f"{pct(probes, 50):.0f} / {pct(probes, 99):.0f} ms (n={len(probes)})")
    d.terminate()
    return res


def bench_supervisord(run: Run, n: int, a: argparse.Namespace, bare: float) -> None:
    d = Supervisord(run, supervisord_programs("plain", n), f"sd{n}")
    run.daemons.append(d)
    t0 = d.start()
    t_alive = wait_children(d.pid, n, 900)
    say(f"supervisord 4.3.0 N={n}")
    row("boot -> all alive", f"{t_alive - t0:.2f} s = {n / (t_alive - t0):.0f}/s "
        f"({(t_alive - t0) / bare:.2f}x the bare loop)")
    d.wait_all_running(n, 900, 1.0)
    time.sleep(2)
    row(f"idle daemon CPU ({a.idle:g} s)", f"{idle_cpu(d.pid, a.idle):.3f} %")
    row("daemon VmRSS", f"{rss_kb(d.pid) / 1024:.1f} MB")
    row("supervisorctl status (whole CLI), median",
        med(timed(lambda: d.ctl("status"), max(1, a.reps // 2))))
    pids = children(d.pid)
    t0 = time.monotonic()
    rc, _o, wall = d.ctl("stop", "all", timeout=900)
    t_gone = wait_gone(pids, 300)
    row("stop all -> returned / all gone", f"{wall:.2f} s / {t_gone - t0:.2f} s (exit {rc})")
    d.terminate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--sd-workers", type=int, default=2000)
    ap.add_argument("--no-sd", action="store_true", help="skip supervisord")
    ap.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    header("10,000 workers at the kernel's pace", "see the docstring (figures of issue 13)",
           "10k alive <= 2.5x bare loop and <= 12 s, 0 FATAL, status <= 300 ms (10k) / 60 ms "
           "(1k), idle <= 0.2 %, RSS <= 150 MB, stop all <= 2 s, adopt <= 4 s, CLI p99 <= "
           "150 ms", max(sizes))
    rss: dict[int, float] = {}
    for n in sizes:
        with Run(f"scale{n}") as run:
            stop: list[float] = []
            bare = bare_loop(run, n, logs=False, stop=stop)
            bare_logs = bare_loop(run, n, logs=True)
            say(f"bare posix_spawn loop N={n}: {bare:.2f} s = {n / bare:.0f}/s; with two new "
                f"log files each: {bare_logs:.2f} s = {n / bare_logs:.0f}/s; killpg SIGTERM "
                f"each -> all reaped: {stop[0]:.2f} s")
            res = bench_pyvisor(run, n, a, bare)
            rss[n] = res["rss"]
            row("  boot vs the bare loop with log files",
                f"{res['boot_alive'] / bare_logs:.2f}x")
    if len(rss) >= 2:
        lo, hi = min(rss), max(rss)
        say(f"daemon RSS per worker, marginal ({lo} -> {hi}): "
            f"{(rss[hi] - rss[lo]) * 1024 / (hi - lo):.1f} KB")
    if not a.no_sd:
        with Run("scale-sd") as run:
            bare = bare_loop(run, a.sd_workers, logs=False)
            say(f"bare posix_spawn loop N={a.sd_workers}: {bare:.2f} s = "
                f"{a.sd_workers / bare:.0f}/s")
            bench_supervisord(run, a.sd_workers, a, bare)


if __name__ == "__main__":
    main()
