"""Shared pieces of the benches: a run directory, both supervisors, /proc helpers, statistics.

Every bench runs inside ``with Run("name") as run:``. The run owns a temp directory, a block
prefix (``pvb-<hex>``) and a tag: every daemon the bench starts gets ``PVBENCH_TAG=<uuid>`` in
its environment, which its workers inherit. Cleanup (even on an exception or Ctrl-C) kills,
by PID, every process whose environment carries that exact tag -- the daemons, their workers,
and the orphans a SIGKILLed supervisord leaves behind -- then unlinks /dev/shm/<prefix>.* and
removes the temp directory. Nothing else is ever signalled.

supervisord 4.3.0 runs from its own venv under ~/.cache/pyvisor-bench (created on first use;
its distribution is also called "supervisor", so it never goes into the repo's .venv).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xmlrpc.client
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from supervisor import paths

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PV_BIN = REPO / ".venv" / "bin"
CACHE = Path(os.environ.get("PYVISOR_BENCH_CACHE", Path.home() / ".cache" / "pyvisor-bench"))
SD_VENV = CACHE / "supervisord-venv"
SD_VERSION = "4.3.0"
TAG_VAR = "PVBENCH_TAG"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def say(*a: Any) -> None:
    print(*a, flush=True)


def header(title: str, measures: str, targets: str, n: int) -> None:
    say(f"== {title} ==")
    say(f"measures: {measures}")
    say(f"target:   {targets}")
    load = Path("/proc/loadavg").read_text().split()[:3]
    say(f"N={n}  cpus={os.cpu_count()}  loadavg={' '.join(load)}  "
        f"date={time.strftime('%Y-%m-%d %H:%M')}")


# -- statistics -----------------------------------------------------------------------------

def pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs: Sequence[float], unit: str = "ms") -> str:
    if not xs:
        return "no samples"
    return (f"n={len(xs)} p50={pct(xs, 50):.2f}{unit} p90={pct(xs, 90):.2f}{unit} "
            f"p99={pct(xs, 99):.2f}{unit} min={min(xs):.2f} max={max(xs):.2f}")


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# -- limits, tools --------------------------------------------------------------------------

def raise_nofile(want: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE (inherited by the daemons we start) up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def ensure_supervisord() -> Path:
    """bin/ of a venv holding supervisor==4.3.0, created in the cache on first use."""
    sd = SD_VENV / "bin" / "supervisord"
    if not sd.exists():
        say(f"creating {SD_VENV} with supervisor=={SD_VERSION} ...")
        SD_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(SD_VENV)], check=True)
        subprocess.run([str(SD_VENV / "bin" / "pip"), "install", "-q",
                        f"supervisor=={SD_VERSION}"], check=True)
    return SD_VENV / "bin"


def c_binary(name: str) -> str:
    """bench/workers/NAME.c compiled with cc into the cache (again when the source is newer)."""
    src = BENCH / "workers" / f"{name}.c"
    out = CACHE / name
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cc", "-std=gnu11", "-O2", f"-I{REPO / 'worker'}", "-o", str(out),
                        str(src)], check=True)
    return str(out)


def alive_binary() -> str:
    """A tiny C program: writes "pid CLOCK_MONOTONIC-ns" to argv[1] (a FIFO) then pause()s."""
    return c_binary("alive")


def coop_binary() -> str:
    """The cooperative C worker (worker/ctlblock.h): READY, futex wait for a stop, exit 0;
    outside pyvisor it waits in sigwait for SIGTERM."""
    return c_binary("coop")


PY_WORKER = str(BENCH / "workers" / "pvb_worker.py")


# -- /proc ----------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of pid (fields 14, 15 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def tagged_pids(tag: str) -> list[int]:
    """PIDs whose environment holds PVBENCH_TAG=tag (exactly): the processes this run started."""
    needle = f"{TAG_VAR}={tag}".encode()
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            out.append(int(d))
    return out


def wait_until(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> Any:
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = cond()
        if last:
            return last
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def wait_gone(pids: Iterable[int], timeout: float) -> float:
    """Block until every pid has exited (pidfd poll); returns time.monotonic() when done."""
    fds = []
    for p in pids:
        try:
            fds.append(os.pidfd_open(p))
        except ProcessLookupError:
            pass
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        left = len(fds)
        end = time.monotonic() + timeout
        while left:
            ms = max(0, int((end - time.monotonic()) * 1000))
            ev = poller.poll(ms)
            if not ev:
                raise TimeoutError(f"{left} processes still alive after {timeout} s")
            for fd, _ in ev:
                poller.unregister(fd)
                left -= 1
        return time.monotonic()
    finally:
        for fd in fds:
            os.close(fd)


class Fifo:
    """A FIFO the bench reads "pid mono_ns" lines from (held O_RDWR: never EOF, never blocks)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path, 0o600)
        self.path = str(path)
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.buf = b""

    def read(self, timeout: float) -> list[tuple[int, int]]:
        """Lines available now, waiting up to timeout for the first one."""
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return []
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            self.buf += chunk
            if len(chunk) < 65536:
                break
        *lines, self.buf = self.buf.split(b"\n")
        return [(int(a), int(b)) for a, b in (ln.split() for ln in lines if ln)]

    def close(self) -> None:
        os.close(self.fd)


# -- the run --------------------------------------------------------------------------------

class Run:
    def __init__(self, name: str) -> None:
        self.name = name
        self.tag = uuid.uuid4().hex
        self.prefix = f"pvb-{self.tag[:12]}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"pvbench-{name}-"))
        self.nofile = raise_nofile()
        self.daemons: list[Daemon] = []

    def __enter__(self) -> Run:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[TAG_VAR] = self.tag
        env.pop("PYVISOR_CONFIG", None)
        return env

    def kill_all(self) -> int:
        """SIGKILL every process carrying our tag (by PID); returns how many there were."""
        pids = tagged_pids(self.tag)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for d in self.daemons:
            d.reap()
        return len(pids)

    def cleanup(self) -> None:
        for d in self.daemons:
            try:
                d.terminate()
            except Exception as e:  # cleanup goes on whatever happened
                say(f"cleanup: {d.kind}: {e}")
        end = time.monotonic() + 10
        while self.kill_all() and time.monotonic() < end:
            time.sleep(0.05)
        for d in self.daemons:   # a killed daemon leaves its locator (the runtime directory)
            if isinstance(d, Pyvisor) and d.proc is not None:
                paths.remove_locator(str(d.config), d.pid)
        for left in (f"intent-{self.prefix}.json", f"intent-{self.prefix}.journal",
                     f"prefix-{self.prefix}.lock"):
            with contextlib.suppress(OSError):   # its record of what was asked, its lock
                os.unlink(os.path.join(paths.runtime_dir(), left))
        for n in os.listdir("/dev/shm"):
            if n.startswith(self.prefix + "."):
                try:
                    os.unlink(f"/dev/shm/{n}")
                except FileNotFoundError:
                    pass
        self._remove_cgroups()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_cgroups(self) -> None:
        """The instance cgroups a killed pyvisor leaves (empty once kill_all is done)."""
        try:
            from supervisor.runtime.cgroups import cgroup2_mount
        except ImportError:          # an older pyvisor: no cgroups
            return
        mount = cgroup2_mount()
        base = os.path.join(mount, self.prefix) if mount else ""
        if not base or not os.path.isdir(base):
            return
        for entry in os.scandir(base):
            with contextlib.suppress(OSError):
                os.rmdir(entry.path)
        with contextlib.suppress(OSError):
            os.rmdir(base)

    def pyvisor(self, workers: dict[str, dict[str, Any]], name: str = "pv",
                cgroups: bool = True) -> Pyvisor:
        d = Pyvisor(self, workers, name, cgroups)
        self.daemons.append(d)
        return d

    def supervisord(self, programs: dict[str, dict[str, Any]], name: str = "sd") -> Supervisord:
        d = Supervisord(self, programs, name)
        self.daemons.append(d)
        return d


class Daemon:
    kind = "?"
    names: list[str]

    def __init__(self, run: Run, name: str) -> None:
        self.run = run
        self.dir = run.dir / name
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "daemon.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> float:
        """Start the daemon in the foreground; returns time.monotonic() just before."""
        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.run.env(),
                                         cwd=self.dir)
        return t0

    def reap(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(0.5)
            except subprocess.TimeoutExpired:
                pass

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def ctl_argv(self, *args: str) -> list[str]:
        raise NotImplementedError

    def ctl(self, *args: str, timeout: float = 120) -> tuple[int, str, float]:
        """Run the CLI; returns (exit code, stdout, wall seconds)."""
        argv = self.ctl_argv(*args)
        t0 = time.monotonic()
        p = subprocess.run(argv, capture_output=True, timeout=timeout, env=self.run.env(),
                           cwd=self.dir, check=False)
        return p.returncode, p.stdout.decode(errors="replace"), time.monotonic() - t0

    def states(self) -> dict[str, tuple[str, int]] | None:
        """name -> (STATE, pid) over the daemon's socket, None if it does not answer."""
        raise NotImplementedError

    def count_running(self) -> int:
        st = self.states()
        return 0 if st is None else sum(1 for s, _ in st.values() if s == "RUNNING")

    def wait_all_running(self, n: int, timeout: float, step: float = 0.05) -> float:
        wait_until(lambda: self.count_running() >= n, timeout, f"{n} RUNNING in {self.kind}",
                   step)
        return time.monotonic()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Pyvisor(Daemon):
    kind = "pyvisor"

    def __init__(self, run: Run, workers: dict[str, dict[str, Any]], name: str,
                 cgroups: bool = True) -> None:
        super().__init__(run, name)
        self.sock = str(self.dir / "ctl.sock")
        self.config = self.dir / "pyvisor.yaml"
        cfg = {"supervisor": {"socket": self.sock, "log_dir": str(self.dir / "logs"),
                              "block_prefix": run.prefix, "log_level": "INFO",
                              # only when off: an older pyvisor (PYTHONPATH=<old checkout>,
                              # for before/after runs) does not know the key
                              **({} if cgroups else {"cgroups": False})},
               "workers": workers}
        self.config.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
        self.names = [f"{w}:{i}" for w, c in workers.items() for i in range(c.get("numprocs", 1))]

    def argv(self) -> list[str]:
        return [str(PV_BIN / "supervisord"), "-c", str(self.config)]

    def ctl_argv(self, *args: str) -> list[str]:
        return [str(PV_BIN / "supervisorctl"), "-c", str(self.config), *args]

    def request(self, cmd: str, targets: Sequence[str] = ("all",),
                opts: dict[str, Any] | None = None, timeout: float = 120) -> dict[str, Any]:
        """One raw request on the control socket (no CLI start-up)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.sock)
            s.sendall(json.dumps({"cmd": cmd, "targets": list(targets),
                                  "opts": opts or {}}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)

    def status_json(self) -> list[dict[str, Any]] | None:
        try:
            r = self.request("status", ["all"], {"json": True}, timeout=30)
        except (OSError, ValueError):
            return None
        data = r.get("data")
        if isinstance(data, list):
            return data
        try:
            return json.loads(r.get("out") or "null")
        except ValueError:
            return None

    def states(self) -> dict[str, tuple[str, int]] | None:
        st = self.status_json()
        if st is None:
            return None
        return {e["name"]: (e["state"], e.get("pid") or 0) for e in st}


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self.path = path
        self.tmo = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixHTTP(self.path, self.tmo)


class Supervisord(Daemon):
    """supervisord 4.3.0: programs {name: {command, numprocs, ...supervisord keys}}."""

    kind = "supervisord"

    def __init__(self, run: Run, programs: dict[str, dict[str, Any]], name: str) -> None:
        super().__init__(run, name)
        self.bin = ensure_supervisord()
        self.sock = str(self.dir / "sd.sock")
        self.config = self.dir / "supervisord.conf"
        lines = [
            "[unix_http_server]", f"file={self.sock}", "chmod=0700", "",
            "[supervisord]", "nodaemon=true", f"logfile={self.dir}/supervisord.log",
            f"pidfile={self.dir}/supervisord.pid", f"childlogdir={self.dir}",
            "loglevel=info", f"minfds={min(run.nofile, 65536)}", "minprocs=200", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "", "[supervisorctl]", f"serverurl=unix://{self.sock}", "",
        ]
        self.names = []
        for prog, opts in programs.items():
            n = int(opts.get("numprocs", 1))
            lines.append(f"[program:{prog}]")
            lines.append("process_name=%(program_name)s_%(process_num)d")
            for k, v in opts.items():
                lines.append(f"{k}={v}")
            lines.append("")
            self.names += [f"{prog}:{prog}_{i}" for i in range(n)]
        self.config.write_text("\n".join(lines))

    def argv(self) -> list[str]:
        return [str(self.bin / "supervisord"), "-n", "-c", str(self.config)]

    def ctl_argv(self, *args: str) -> list[str]:
        return [str(self.bin / "supervisorctl"), "-c", str(self.config), *args]

    def rpc(self, timeout: float = 120) -> Any:
        return xmlrpc.client.ServerProxy("http://localhost",
                                         transport=_UnixTransport(self.sock, timeout))

    def states(self) -> dict[str, tuple[str, int]] | None:
        try:
            infos = self.rpc(30).supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return None
        return {f"{i['group']}:{i['name']}": (i["statename"], i["pid"]) for i in infos}


def ms(seconds: float) -> float:
    return seconds * 1000.0


def parse_args(desc: str, default_n: int, quick_n: int = 100,
               extra: Callable[[Any], None] | None = None) -> Any:
    import argparse
    ap = argparse.ArgumentParser(description=desc)
    ap.add_argument("--workers", type=int, default=None, help=f"N (default {default_n})")
    ap.add_argument("--quick", action="store_true", help=f"smoke run (N={quick_n})")
    ap.add_argument("--only", choices=["pyvisor", "pyvisor-nocg", "supervisord"],
                    help="run one side only (pyvisor-nocg: pyvisor without cgroups)")
    if extra:
        extra(ap)
    a = ap.parse_args()
    if a.workers is None:
        a.workers = quick_n if a.quick else default_n
    return a
