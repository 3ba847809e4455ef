"""Helpers for the tests that run a real supervisord: a deadline-bounded poll and a handle on
one daemon process that cleans up after itself.

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

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

BIN_DIR = os.path.dirname(sys.executable)
SUPERVISORD = os.path.join(BIN_DIR, "supervisord")
SUPERVISORCTL = os.path.join(BIN_DIR, "supervisorctl")
SHM_DIR = Path("/dev/shm")
POLL_S = 0.02


class Abort(Exception):
    """Raised by a wait_until predicate: stop waiting now (e.g. the process died)."""


def wait_until(pred: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call ``pred`` until it returns something truthy (returned) or ``timeout`` seconds pass
    (AssertionError naming ``what`` and the last value seen). An exception from ``pred`` counts
    as a value, except AssertionError and Abort, which end the wait at once."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = pred()
        except (AssertionError, Abort):
            raise
        except Exception as e:  # noqa: BLE001 - the last error is the last value seen
            last = e
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; "
                                 f"last value seen: {last!r}")
        time.sleep(POLL_S)


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


def shm_with_prefix(prefix: str) -> list[str]:
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix + "."))


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
        self.proc: subprocess.Popen[bytes] | None = None
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

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        """Start supervisord and wait until its control socket answers ``status``."""
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen([SUPERVISORD, "-c", str(self.config_path)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
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
        """Wait until ``instance`` is in ``state``; returns its status row."""
        last: list[dict[str, Any]] = []

        def check() -> bool:
            row = self.status_of(instance)
            last[:] = [row]
            return bool(row["state"] == state)

        try:
            wait_until(check, timeout, f"{instance} to be {state}")
        except AssertionError as e:
            raise AssertionError(f"{e}; last status row: {last}") from None
        return last[0]

    def log_text(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, regex: str, timeout: float = 15.0, after: int = 0) -> re.Match[str]:
        """Wait for ``regex`` (MULTILINE) in the daemon's output from character ``after`` on."""
        pattern = re.compile(regex, re.MULTILINE)

        def found() -> re.Match[str] | None:
            return pattern.search(self.log_text(), after)

        try:
            return wait_until(found, timeout, f"daemon log to match {regex!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- supervisord output ---\n{self.log_text()}") from None

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
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if victims:
            wait_until(lambda: not any(pid_alive(p) for p in victims), 10,
                       "left-over processes to die")
        for name in shm_with_prefix(self.prefix):
            left.append(f"/dev/shm/{name} was left; unlinked")
            try:
                (SHM_DIR / name).unlink()
            except FileNotFoundError:
                pass
        left += self._remove_locator()
        return left

    def _remove_locator(self) -> list[str]:
        from supervisor import paths
        loc = paths.locator_path(str(self.config_path))
        if os.path.exists(loc):
            os.unlink(loc)
            return [f"locator {loc} was left; removed"]
        return []


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
