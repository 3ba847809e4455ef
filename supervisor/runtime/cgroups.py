"""A cgroup (v2) per instance: a worker is its whole process tree.

Layout: the daemon's own cgroup (where it was started: the unit's cgroup under systemd with
``Delegate=yes``, or wherever root started it) is the *base*. Instances live in
``<base>/<prefix>/<instance>``. When the base is not the hierarchy's root, the daemon first
moves itself into the leaf ``<base>/supervisord.<prefix>``, so that it never sits in an inner
node with processes (cgroup v2's "no internal processes" rule) and its workers' cgroups are
its siblings, not its children.

Spawning straight into the cgroup: clone3 with CLONE_INTO_CGROUP and the cgroup's directory fd
(supervisor._spawn), so the worker is born there, before it runs a single instruction of its
own, and nothing it forks can escape. Where clone3 cannot take a cgroup, the daemon moves itself
into the instance's cgroup around the spawn instead (``entered``: two writes, each a cgroup
migration of the daemon, which is far slower).

A process cannot leave a cgroup without write access to ``cgroup.procs`` of a common
ancestor, which only root (or the daemon's uid, in a delegated subtree) has: membership is
part of the identity the daemon verifies at adoption.

Where there is no writable cgroup2 hierarchy (non-root without delegation, a read-only mount,
``supervisor: {cgroups: false}``) ``CgroupTree.setup`` returns None with the reason, and the
runtime falls back to process groups.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import threading
import time
from collections.abc import Callable

from supervisor.runtime.procstats import PAGE as _PAGE
from supervisor.runtime.procstats import read_stats

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _read(path: str, limit: int = 1 << 20) -> str:
    """At most limit bytes of path, read until EOF: cgroupfs and procfs give at most a page
    per read(), so one read of the cgroup.procs of a tree of 1,000 processes named ~680 of
    them (the others got no stop_signal), and a long /proc/self/mountinfo was cut."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts: list[bytes] = []
        left = limit
        while left > 0 and (data := os.read(fd, left)):
            parts.append(data)
            left -= len(data)
        return b"".join(parts).decode("ascii", "replace")
    finally:
        os.close(fd)


def cgroup2_mount() -> str | None:
    """Where the cgroup2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
    hybrid setup), from /proc/self/mountinfo."""
    try:
        text = _read("/proc/self/mountinfo")
    except OSError:
        return None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            fields = left.split()
            if len(fields) >= 5:
                return fields[4].replace("\\040", " ")
    return None


def own_cgroup(pid: int | str = "self") -> str | None:
    """The cgroup2 path of a process ("/system.slice/x.service"), from /proc/PID/cgroup."""
    try:
        text = _read(f"/proc/{pid}/cgroup")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


class CgroupTree:
    def __init__(self, mount: str, base: str, prefix: str, home: str) -> None:
        self.mount = mount
        self.base = base                      # absolute directory of the base cgroup
        self.dir = os.path.join(base, prefix)  # the instances' parent
        self._relative = "/" + os.path.relpath(self.dir, mount)   # as /proc/PID/cgroup has it
        self.home = home                      # the daemon's own cgroup.procs
        self.has_kill = True
        self.has_memory = False
        # cgroups to make anew before a spawn (prepare): those cgroup.kill was written to,
        # and those an earlier daemon left (it may have written it). On this kernel (6.18) a
        # process born by clone3(CLONE_INTO_CGROUP) into a cgroup that was killed is SIGKILLed
        # at once, even once the cgroup is empty (one moved in by cgroup.procs is not).
        self.remake: set[str] = set()

    @classmethod
    def setup(cls, prefix: str) -> tuple[CgroupTree | None, str]:
        """(the tree, "") or (None, why there is none)."""
        mount = cgroup2_mount()
        if mount is None:
            return None, "no cgroup2 hierarchy is mounted"
        own = own_cgroup()
        if own is None:
            return None, "this process has no cgroup2 path"
        base = os.path.normpath(mount + own)
        leaf = f"supervisord.{prefix}"
        if os.path.basename(base) == leaf:        # a re-exec, or a restart in our own leaf
            base = os.path.dirname(base)
        try:
            if base != mount:
                # never an inner node with processes: the daemon goes into a leaf of its own
                home = os.path.join(base, leaf)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(home, 0o755)
                _write(os.path.join(home, "cgroup.procs"), "0")
            else:
                home = base
            tree = cls(mount, base, prefix, os.path.join(home, "cgroup.procs"))
            with contextlib.suppress(FileExistsError):
                os.mkdir(tree.dir, 0o755)
            if not os.access(os.path.join(tree.dir, "cgroup.procs"), os.W_OK):
                return None, f"{tree.dir} is not writable"
        except OSError as e:
            return None, f"cannot set up cgroups under {base}: {e.strerror or e}"
        tree.has_kill = os.path.exists(os.path.join(tree.dir, "cgroup.kill"))
        with contextlib.suppress(OSError), os.scandir(tree.dir) as entries:
            tree.remake = {e.path for e in entries if e.is_dir(follow_symlinks=False)}
        try:     # the memory controller, if any, is what the instances' cgroups get
            tree.has_memory = "memory" in _read(os.path.join(tree.dir, "cgroup.subtree_control"))
        except OSError:
            tree.has_memory = False
        return tree, ""

    # -- one instance's cgroup -------------------------------------------------------------
    def path(self, instance: str) -> str:
        return os.path.join(self.dir, instance)

    def relative(self, instance: str) -> str:
        """The path as /proc/PID/cgroup shows it (an instance name is one path component)."""
        return f"{self._relative}/{instance}"

    def prepare(self, instance: str) -> str:
        path = self.path(instance)
        if path in self.remake:       # perhaps killed: not to be born into; made anew
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as e:      # EBUSY: what was killed is not gone yet
                raise OSError(e.errno, f"cannot make {path} anew after cgroup.kill: "
                              f"{e.strerror}") from None
            self.remake.discard(path)
        # usually made already, ahead of the spawn by its helper thread (runtime/outputs.py):
        # a stat costs a few us, a mkdir in cgroupfs that finds it ~40 us and an exception
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(path).st_mode):
                return path
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)
        return path

    def open_dir(self, instance: str) -> tuple[str, int]:
        """prepare(instance), and an fd of the directory for clone3 (CLONE_INTO_CGROUP). One
        open where it is made already (the helper makes it ahead of the spawn): O_NOFOLLOW |
        O_DIRECTORY opens the directory itself or nothing, so the lstat is left out there;
        anything else goes through prepare()."""
        path = self.path(instance)
        if path not in self.remake:
            with contextlib.suppress(FileNotFoundError):
                return path, os.open(path, _DIR_FLAGS)
        path = self.prepare(instance)
        return path, os.open(path, _DIR_FLAGS)

    @contextlib.contextmanager
    def entered(self, path: str):  # type: ignore[no-untyped-def]
        """The daemon inside the cgroup at path for the duration (a fork inside is born
        there), and back home afterwards, whatever happens."""
        _write(os.path.join(path, "cgroup.procs"), "0")
        try:
            yield
        finally:
            _write(self.home, "0")

    def contains(self, instance: str, pid: int) -> bool:
        return own_cgroup(pid) == self.relative(instance)

    def has_id(self, instance: str, cgroup_id: int) -> bool:
        """Whether cgroup_id (a process's, from supervisor.pidinfo) is the instance's cgroup:
        the id of a cgroup v2 is the inode number of its directory."""
        try:
            return os.stat(self.path(instance), follow_symlinks=False).st_ino == cgroup_id
        except OSError:
            return False

    def members(self, path: str) -> list[int]:
        try:
            return [int(p) for p in _read(os.path.join(path, "cgroup.procs")).split()]
        except (OSError, ValueError):
            return []

    def populated(self, path: str) -> bool:
        try:
            return "populated 1" in _read(os.path.join(path, "cgroup.events"))
        except OSError:
            return False

    def signal(self, path: str, signum: int, sent: int = 0) -> None:
        """Send signum to every process in the cgroup (a double-forked daemon included);
        ``sent``: a pid that already has it (the leader, signalled with its group)."""
        if signum == signal.SIGKILL and self.has_kill:
            with contextlib.suppress(OSError):
                self.remake.add(path)
                _write(os.path.join(path, "cgroup.kill"), "1")
                return
        for pid in self.members(path):
            if pid != sent:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)

    def remove(self, path: str) -> None:
        """rmdir an empty instance cgroup (EBUSY while it has processes: left for later)."""
        try:
            os.rmdir(path)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                raise

    def stats(self, path: str) -> dict[str, int | None]:
        """processes, cpu_usec (the whole tree, exited children included), memory (bytes:
        memory.current where the memory controller is enabled, else the sum of the members'
        RSS), oom_kills (None without the memory controller).

        Two reads for a tree of one process without the memory controller (the common case,
        and status reads every instance): its members, then the one member's /proc/PID/stat
        (CPU of it and of its reaped descendants, RSS)."""
        members = self.members(path)
        if len(members) == 1 and not self.has_memory:
            one = proc_stats(members[0], with_children=True)
            if one is not None:
                return {"processes": 1, "cpu_usec": one[0], "memory": one[1],
                        "oom_kills": None}
        cpu = memory = ooms = None
        try:
            for line in _read(os.path.join(path, "cpu.stat")).splitlines():
                if line.startswith("usage_usec "):
                    cpu = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        if not self.has_memory:         # no memory controller: the members' RSS
            memory = _rss_sum(members)
            return {"processes": len(members), "cpu_usec": cpu, "memory": memory,
                    "oom_kills": None}
        try:
            memory = int(_read(os.path.join(path, "memory.current")).strip())
        except (OSError, ValueError):
            memory = _rss_sum(members)
        try:
            for line in _read(os.path.join(path, "memory.events")).splitlines():
                if line.startswith("oom_kill "):
                    ooms = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return {"processes": len(members), "cpu_usec": cpu, "memory": memory,
                "oom_kills": ooms}


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def proc_stats(pid: int, with_children: bool = False) -> tuple[int, int] | None:
    """(cpu_usec, rss bytes) of a process from one read of /proc/PID/stat (utime + stime, and
    cutime + cstime: its reaped descendants, with_children), None if it cannot be read."""
    got = read_stats([pid])[0]
    if not isinstance(got, tuple):
        return None
    return got[1] if with_children else got[0], got[2]


def _rss_sum(pids: list[int]) -> int | None:
    total, seen = 0, False
    for pid in pids:
        try:
            total += int(_read(f"/proc/{pid}/statm", 256).split()[1]) * _PAGE
            seen = True
        except (OSError, ValueError, IndexError):
            pass
    return total if seen else None


class Remover:
    """rmdir of the instance cgroups whose trees are gone, in a thread of its own, once the
    exits have settled: an rmdir of a cgroup takes ~0.2 ms here, most of it waiting in the
    kernel (10,000 after a stop all: 2 s in which the loop would answer nobody), and nothing
    needs them gone before a stop is reported.

    Rules: a removal starts once none has been asked for QUIET seconds (the exits of a stop
    all come in batches over a second or two, while the kernel is busy with them), and at the
    latest LATEST seconds after the oldest one waiting. A spawn into an instance's cgroup first
    ``claim``s it: taken off the queue, or waited for while its rmdir runs (at most one), so
    no spawn goes into a cgroup being removed. A cgroup that has a process again anyway is
    refused by the kernel (EBUSY) and stays. The thread blocks every signal (they go to the
    loop's thread)."""

    QUIET = 0.5
    LATEST = 5.0

    def __init__(self, tree: CgroupTree, warn: Callable[[str], None]) -> None:
        self._tree = tree
        self._warn = warn
        self._cv = threading.Condition()
        self._queue: dict[str, None] = {}
        self._busy: str | None = None
        self._asked = 0.0          # monotonic time of the last add
        self._since = 0.0          # ... of the oldest one waiting
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, paths: list[str]) -> None:
        """Queue paths (the trees that ended in one loop turn: one lock, one wake-up)."""
        if not paths:
            return
        with self._cv:
            if self._closed:
                return
            self._asked = time.monotonic()
            idle = not self._queue
            if idle:
                self._since = self._asked
            self._queue.update(dict.fromkeys(paths))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cgroup-rmdir",
                                                daemon=True)
                self._thread.start()
            if idle:          # else it is waiting for a quiet moment: it looks again itself
                self._cv.notify()

    def claim(self, path: str) -> None:
        with self._cv:
            self._queue.pop(path, None)
            while self._busy == path:
                self._cv.wait()

    def pending(self) -> int:
        with self._cv:
            return len(self._queue) + (self._busy is not None)

    def _next(self) -> str | None:
        with self._cv:
            while not self._closed:
                if not self._queue:
                    self._cv.wait()
                    continue
                wait = min(self._asked + self.QUIET, self._since + self.LATEST) - time.monotonic()
                if wait <= 0:
                    break
                self._cv.wait(wait)
            if self._closed:
                return None
            path, _ = self._queue.popitem()
            self._busy = path
            return path

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while (path := self._next()) is not None:
            try:
                self._tree.remove(path)
            except OSError as e:
                self._warn(f"cannot remove the empty cgroup {path}: {e}")
            finally:
                with self._cv:
                    self._busy = None
                    if not self._queue:
                        self._since = 0.0
                    self._cv.notify_all()

    def close(self, timeout: float = 2.0) -> None:
        """Stop (what is still queued is left to the caller's sweep)."""
        with self._cv:
            self._closed = True
            self._queue.clear()
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
