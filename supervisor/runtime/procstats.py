"""status's kernel reads for many instances at once: /proc/PID/stat, the instances' cgroup
files and the pid word of their status pages, through supervisor._readfiles (one C call per
kind of file, relative to a held directory fd of /proc, of the instances' parent cgroup and of
/dev/shm).

What a worker controls here: its cgroup's membership (it can fork many processes) and its
/proc entry (it can exit at any moment, its PID can be reused once it is reaped). So every read
is bounded (4 KiB of a stat line; 32 bytes of cgroup.procs, enough to tell "PID\\n" alone), a
file that cannot be read is simply not used, and anything but the common case (a tree of one
process, the instance's own leader) goes to the per-instance path in cgroups.py, which reads
the rest (cpu.stat, the members' statm).

The /proc/PID/stat of the leader is read BEFORE its cgroup's cgroup.procs, and is used only
when cgroup.procs then names that one PID. The daemon's own children cannot be reaped while
status runs (the loop reaps between turns), so their PID cannot change hands in between; an
adopted leader's PID would have to be reused twice within one status call (by a process outside
the cgroup, then by one forked inside it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from supervisor import _readfiles

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK_USEC = 1_000_000 // os.sysconf("SC_CLK_TCK")
PROCS_LIMIT = 4096     # bytes of cgroup.procs read_procs reads: 512 members at least; a
#                        fuller one (exactly this many bytes) takes the per-instance path
Stats = dict[str, int | None]

_fds: dict[str, int] = {}


def dir_fd(path: str) -> int:
    """A held O_PATH fd of the directory at path (/proc, the instances' cgroup parent): opened
    once, CLOEXEC, never passed to a worker (spawns close every fd above the placeholders)."""
    fd = _fds.get(path)
    if fd is None:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        _fds[path] = fd
    return fd


def close_fds() -> None:
    for fd in _fds.values():
        os.close(fd)
    _fds.clear()


def parse_stat(raw: bytes | int) -> tuple[int, int, int] | None:
    """(cpu_usec, cpu_usec with its reaped children, rss bytes) from the text of
    /proc/PID/stat (utime + stime; plus cutime + cstime), None for an errno or text that is
    not a stat line. Parsed in C (_readfiles), which skips the comm by the LAST ')': a process
    can put ')' and spaces in its own comm."""
    if isinstance(raw, int):
        return None
    return _readfiles.parse_stat(raw, TICK_USEC, PAGE)


def read_stats(pids: Sequence[int]) -> list[tuple[int, int, int] | int | None]:
    """parse_stat of each pid's /proc/PID/stat (or its errno), read and parsed in one call."""
    return _readfiles.read_stats(dir_fd("/proc"), pids, TICK_USEC, PAGE)


def sole_members(parent: str, names: Sequence[str], pids: Sequence[int]) -> list[bool]:
    """Whether the cgroup.procs of each cgroup <parent>/<name> names its pid and nothing else
    (one call; a cgroup that cannot be read: False)."""
    return _readfiles.sole_members(dir_fd(parent), names, pids)


def read_procs(parent: str, names: Sequence[str]) -> list[bytes | int]:
    """cgroup.procs (or errno) of each cgroup <parent>/<name>, in one call, PROCS_LIMIT bytes
    at most each."""
    return _readfiles.read_files(dir_fd(parent), [f"{n}/cgroup.procs" for n in names],
                                 PROCS_LIMIT)


def attach_pids(status_names: Sequence[str]) -> list[int]:
    """The pid word of each status page in /dev/shm (its first 8 bytes: the ack word, then the
    pid the worker wrote when it attached); 0 when it is 0 or the page cannot be read. Not
    checked (owner, type) as worker.ctlpage checks it: the caller only takes a 0 from here
    ("never attached", which the checked read would also conclude of a page it refuses) and
    reads a page that says anything else through the checked path."""
    return _readfiles.page_pids(dir_fd("/dev/shm"), status_names)
