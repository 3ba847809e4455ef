"""A real supervisord per test: a handle on one daemon process that cleans up after itself,
and the /proc helpers the end-to-end tests use.

``DaemonProcess`` writes a config into a test's tmp_path with a socket, log_dir and a unique
block prefix ("t" + 8 hex digits) there, starts ``supervisord -c`` from the venv of the running
interpreter, and offers the control verbs. ``cleanup()`` ALWAYS leaves the machine clean: it
SIGTERMs the daemon (SIGKILL past a deadline), then SIGKILLs, by PID, every process that is
still alive and is either a worker PID this daemon reported (same start time as when seen) or
carries ``PYVISOR_BLOCK=/<prefix>.`` in its environment (grandchildren inherit it), unlinks the
/dev/shm objects with the prefix and the daemon's locator, and returns what it had to clean,
so the fixture can fail a test that left anything behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from tests.support.shm import remove_shm
from tests.support.wait import Abort, wait_until

BIN_DIR = os.path.dirname(sys.executable)
SUPERVISORD = os.path.join(BIN_DIR, "supervisord")
SUPERVISORCTL = os.path.join(BIN_DIR, "supervisorctl")


def ctl_hint(config_path: Path | str) -> str:
    """supervisorctl -c CONFIG as the daemon's hints spell it (by its path when PATH does not
    find the venv's)."""
    from supervisor.names import ctl_command
    return f"{ctl_command()} -c {config_path}"


def proc_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None if there is no such process (zombies count)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def pid_alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:].split()[0] != b"Z"


def fds_once_asleep(pid: int) -> list[str]:
    """The fd numbers of a freshly spawned `sleep`, listed once it is blocked in its sleep
    (state S): before that the dynamic loader holds the libraries it opens (fd 3, briefly)."""
    def asleep() -> bool:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:].split()[0] == b"S"
    wait_until(asleep, 10, f"pid {pid} to block in its sleep")
    return sorted(os.listdir(f"/proc/{pid}/fd"), key=int)


def pids_with_block_prefix(prefix: str) -> list[int]:
    """Processes whose environment has PYVISOR_BLOCK=/<prefix>.… (workers and what they forked)."""
    needle = f"PYVISOR_BLOCK=/{prefix}.".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if any(item.startswith(needle) for item in env.split(b"\0")) and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


class DaemonProcess:
    """One supervisord on a config in ``tmp_path``. Create with ``workers`` (the YAML mapping
    under ``workers:``); ``start()`` runs it. Always call ``cleanup()`` (the fixture does)."""

    def __init__(self, tmp_path: Path, workers: Mapping[str, Any],
                 supervisor: Mapping[str, Any] | None = None, name: str = "pyvisor.yaml") -> None:
        self.dir = tmp_path
        self.prefix = "t" + uuid.uuid4().hex[:8]
        self.config_path = tmp_path / name
        self.socket = tmp_path / "s.sock"
        self.log_dir = tmp_path / "logs"
        self.out_path = tmp_path / f"supervisord-{self.prefix}.out"
        self.supervisor_extra = dict(supervisor or {})
        # (a test may hand over a daemon it started itself, with text pipes)
        self.proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None
        self.seen: dict[int, int | None] = {}      # worker pid -> start ticks when seen
        self.allow_leftovers = False   # tests that kill the daemon hard may set this
        self.write_config(workers)

    # -- config -------------------------------------------------------------------------------
    def supervisor_section(self) -> dict[str, Any]:
        return {"socket": str(self.socket), "log_dir": str(self.log_dir),
                "block_prefix": self.prefix, **self.supervisor_extra}

    def write_config(self, workers: Mapping[str, Any], raw: str | None = None) -> None:
        """Write the config (``raw``: this exact text instead, e.g. an invalid file)."""
        text = raw if raw is not None else yaml.safe_dump(
            {"supervisor": self.supervisor_section(), "workers": dict(workers)},
            sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    # -- the process --------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None, "the daemon was not started"
        return self.proc.pid

    def start(self, timeout: float = 20.0, nofile: tuple[int, int] | None = None
              ) -> DaemonProcess:
        """Start supervisord and wait until its control socket answers ``status``.
        ``nofile``: the (soft, hard) RLIMIT_NOFILE it is started with (through prlimit(1))."""
        argv = [SUPERVISORD, "-c", str(self.config_path)]
        if nofile is not None:
            argv = ["prlimit", f"--nofile={nofile[0]}:{nofile[1]}", "--", *argv]
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         cwd=self.dir)

        why: list[str] = ["not started"]

        def answering() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise Abort(f"supervisord exited {self.proc.returncode}")
            if not self.socket.exists():
                why[0] = "no socket yet"
                return False
            r = self.ctl("status", timeout=10)
            why[0] = f"status exit {r.returncode}: {r.stderr.strip()}"
            return r.returncode in (0, 5)

        try:
            wait_until(answering, timeout, "supervisord to answer status")
        except (AssertionError, Abort) as e:
            raise AssertionError(f"{e} ({why[0]})\n--- supervisord output ---\n"
                                 f"{self.log_text()}") from None
        return self

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``supervisorctl -c CONFIG ARGS...``; text output, never raises on exit codes."""
        return subprocess.run([SUPERVISORCTL, "-c", str(self.config_path), *args],
                              check=False, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def status_json(self) -> list[dict[str, Any]]:
        r = self.ctl("status", "--json")
        assert r.returncode in (0, 5), f"status --json exit {r.returncode}: {r.stderr}{r.stdout}"
        rows: list[dict[str, Any]] = json.loads(r.stdout)
        for row in rows:
            if row.get("pid"):
                self.seen.setdefault(row["pid"], proc_start_ticks(row["pid"]))
        return rows

    def status_of(self, instance: str) -> dict[str, Any]:
        for row in self.status_json():
            if row["name"] == instance:
                return row
        raise AssertionError(f"{instance} not in status")

    def pids(self) -> dict[str, int]:
        """Instance -> pid of every instance that has a process."""
        return {row["name"]: row["pid"] for row in self.status_json() if row.get("pid")}

    def wait_state(self, instance: str, state: str, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until ``instance`` is in ``state``; returns its status row (on timeout the
        failure shows the last row seen)."""
        return wait_until(lambda: self.status_of(instance), timeout, f"{instance} to be {state}",
                          ok=lambda row: bool(row["state"] == state))

    def log_text(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, regex: str, timeout: float = 15.0, after: int = 0) -> re.Match[str]:
        """Wait for ``regex`` (MULTILINE) in the daemon's output from character ``after`` on."""
        pattern = re.compile(regex, re.MULTILINE)

        return wait_until(lambda: pattern.search(self.log_text(), after), timeout,
                          f"daemon log to match {regex!r}",
                          show=lambda: f"--- supervisord output ---\n{self.log_text()}")

    def log_mark(self) -> int:
        """Where the daemon log ends now (for wait_log(after=...))."""
        return len(self.log_text())

    def kill(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the daemon and wait for it to exit; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisord did not exit within {timeout} s of SIGTERM\n"
                                 f"{self.log_text()}") from None

    # -- cleanup ------------------------------------------------------------------------------
    def cleanup(self, timeout: float = 30.0) -> list[str]:
        """Stop everything this daemon (or the test) left; return a description of each thing
        that had to be cleaned up forcibly (empty: it was all gone already)."""
        left: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                left.append(f"supervisord {self.proc.pid} ignored SIGTERM for {timeout} s; "
                            "SIGKILLed")
                self.proc.kill()
                self.proc.wait(10)
        victims = set(pids_with_block_prefix(self.prefix))
        victims |= {p for p, ticks in self.seen.items()
                    if ticks is not None and proc_start_ticks(p) == ticks and pid_alive(p)}
        for p in sorted(victims):
            left.append(f"process {p} ({_cmdline(p)}) was still running; SIGKILLed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        if victims:
            wait_until(lambda: not any(pid_alive(p) for p in victims), 10,
                       "left-over processes to die")
        left += [f"/dev/shm/{name} was left; unlinked" for name in remove_shm(self.prefix + ".")]
        left += self._remove_locator()
        left += self._remove_cgroups()
        return left

    def _remove_cgroups(self) -> list[str]:
        """The instance cgroups (empty ones are removed silently: a daemon that was SIGKILLed
        leaves them for the next one); processes still in one were started by this daemon."""
        from supervisor.runtime.cgroups import cgroup2_mount
        mount = cgroup2_mount()
        base = os.path.join(mount, self.prefix) if mount else None
        if base is None or not os.path.isdir(base):
            return []
        left: list[str] = []
        for entry in os.scandir(base):
            if not entry.is_dir(follow_symlinks=False):
                continue
            with open(os.path.join(entry.path, "cgroup.procs")) as f:
                members = [int(p) for p in f.read().split()]
            if members:
                left.append(f"processes {members} in cgroup {entry.path}; killed")
                with open(os.path.join(entry.path, "cgroup.kill"), "w") as f:
                    f.write("1")
                events = os.path.join(entry.path, "cgroup.events")
                wait_until(lambda e=events: "populated 0" in Path(e).read_text(),  # type: ignore[misc]
                           10, "cgroup to empty")
            os.rmdir(entry.path)
        os.rmdir(base)
        return left

    def _remove_locator(self) -> list[str]:
        from supervisor import paths
        # what a SIGKILLed daemon leaves for the next one (by design): removed silently
        for left in (f"intent-{self.prefix}.json", f"intent-{self.prefix}.journal"):
            Path(paths.runtime_dir(), left).unlink(missing_ok=True)
        Path(paths.runtime_dir(), f"prefix-{self.prefix}.lock").unlink(missing_ok=True)
        loc = paths.locator_path(str(self.config_path))
        if os.path.exists(loc):
            os.unlink(loc)
            return [f"locator {loc} was left; removed"]
        return []


class DaemonFactory(Protocol):
    """The daemon_factory fixture: a DaemonProcess on a config in the test's tmp_path (or in
    ``subdir`` of it), not started; cleaned up after the test."""

    def __call__(self, workers: dict[str, Any], supervisor: dict[str, Any] | None = None,
                 name: str = "pyvisor.yaml", subdir: str | None = None) -> DaemonProcess: ...


# The daemon fixture: the same call as daemon_factory, and the daemon is started.
StartedDaemon = DaemonFactory


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def write_script(directory: Path, name: str, text: str) -> str:
    """Write a Python script (e.g. a worker using ``from worker import Worker``) into
    ``directory``; returns its path."""
    path = directory / name
    path.write_text(text)
    return str(path)
