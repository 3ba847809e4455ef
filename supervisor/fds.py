"""The daemon's file descriptors: its RLIMIT_NOFILE, and what a spawn that ran out of them says.

Rules (as systemd does for the services it starts):
  * At start the daemon raises its soft RLIMIT_NOFILE to the hard limit. It holds one fd per
    worker (its pidfd), so the soft limit the daemon was started with (often 1024) would cap
    the number of workers.
  * Its workers get the soft limit the daemon was started with, set in the child before exec
    (supervisor._spawn), never the raised one: a program that uses select() breaks on fds past
    1024, and a worker must not depend on how many workers its daemon runs.
  * A re-exec inherits the raised limit, so the original soft limit travels in the daemon's
    own environment (ENV_WORKER_NOFILE, never passed to workers).
  * A spawn that fails with EMFILE/ENFILE says so, with the numbers and what to do.
"""

from __future__ import annotations

import errno
import os
import resource

ENV_WORKER_NOFILE = "PYVISOR_WORKER_NOFILE"
_NR_OPEN = "/proc/sys/fs/nr_open"

# (soft, hard) that workers get; None: the daemon's own (nothing to restore)
_worker: tuple[int, int] | None = None


def _nr_open() -> int:
    try:
        with open(_NR_OPEN, encoding="ascii") as f:
            return int(f.read(32))
    except (OSError, ValueError):
        return 1 << 20


def raise_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft before, soft now, what
    workers get). Never raises: a limit that cannot be raised stays (and is reported)."""
    global _worker
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inherited = os.environ.get(ENV_WORKER_NOFILE, "")
    for_workers = soft
    if inherited.isdecimal() and inherited.isascii() and 0 < int(inherited) <= soft:
        for_workers = int(inherited)           # a re-exec: the limit the first one started with
    target = _nr_open() if hard == resource.RLIM_INFINITY else hard
    new = soft
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            new = target
        except (OSError, ValueError):
            new = soft
    os.environ[ENV_WORKER_NOFILE] = str(for_workers)
    _worker = (for_workers, hard) if for_workers != new else None
    return soft, new, for_workers


def worker_limit() -> tuple[int, int] | None:
    """The (soft, hard) RLIMIT_NOFILE a worker is given, None to leave the daemon's."""
    return _worker


def is_exhausted(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE)


def exhausted_hint(e: OSError) -> str:
    """What to say about a spawn that ran out of fds (EMFILE: the daemon's, ENFILE: the
    system's)."""
    if e.errno == errno.ENFILE:
        return ("the system has no file descriptors left (ENFILE, fs.file-max); raise "
                "fs.file-max or run fewer workers")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        held = len(os.listdir("/proc/self/fd"))
    except OSError:
        held = -1
    shown = "?" if held < 0 else str(held)
    return (f"supervisord is out of file descriptors (EMFILE: {shown} open, RLIMIT_NOFILE "
            f"{soft}, hard {hard}; it holds one per worker); raise its hard limit "
            "(LimitNOFILE= in its systemd unit, ulimit -Hn in its shell) or run fewer workers")
