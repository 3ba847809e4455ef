"""The daemon's own log (loguru) and the capture of worker output.

Worker output: a worker's stdout/stderr is a file descriptor of its log file,
opened O_APPEND by the daemon and handed to the child at spawn. The daemon never sits between
a worker and its output, so a daemon crash, SIGKILL or re-exec neither kills (no SIGPIPE) nor
blocks (no full pipe) a worker, and not one byte of output is lost while the daemon is down.

Rotation is size based and done in place ("copytruncate"): the file is copied to ``.1`` (older
backups shifted to ``.2`` …), then truncated to zero; the worker's O_APPEND descriptor simply
continues at the new end. What a worker writes between the copy and the truncation is lost:
the window is one copy_file_range of at most max_bytes (a few ms for 10 MB). While the daemon
is down nothing rotates, so a file can grow past max_bytes until the daemon is back.

The daemon learns that a file grew through inotify, not a timer: one IN_MODIFY|IN_ONESHOT watch
per file, re-armed at most once per ``recheck`` seconds after it fires. An idle worker costs
nothing; a flooding one wakes the daemon at most once per second.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from supervisor import safefs
from supervisor.loop import Loop

_IN_MODIFY = 0x00000002
_IN_ONESHOT = 0x80000000
_IN_DONT_FOLLOW = 0x02000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")
_LATER_SLICE = 0.002     # seconds of deferred first checks per loop turn

LOG_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {message}"


def setup_daemon_logging(level: str, log_file: str | None = None) -> None:
    """One line per event to stderr (journald keeps it under systemd) and optionally a file."""
    logger.remove()
    logger.add(sys.stderr, level=level, format=LOG_FORMAT, colorize=False, backtrace=False,
               diagnose=False)
    if log_file:
        logger.add(log_file, level=level, format=LOG_FORMAT, rotation="10 MB", retention=5,
                   backtrace=False, diagnose=False)
    LineBatch.level_no = logger.level(level).no
    logger.configure(patcher=lambda _record: LineBatch.flush_all())


_LEVEL_NO: dict[str, int] = {}
_BATCH_LINES = 500      # lines held at most (bounded memory, a log kept current)


class LineBatch:
    """The core's log lines (two per instance in a stop of 10,000), written by one loguru call
    per run of lines of one level at the end of the loop turn, instead of one call per line
    (a call formats a record: ~45 us, the most of a transition's cost).

    Each line is formatted here exactly as LOG_FORMAT does, with the time it was logged.
    Order is kept: any other loguru call from the loop's thread (the patcher that
    setup_daemon_logging installs) writes the pending lines first, and so does ``flush`` at
    close and before a re-exec. Only a daemon whose logging setup_daemon_logging made batches
    (``level_no`` set); anywhere else (unit tests, other sinks) each line goes to loguru at
    once."""

    level_no: int | None = None          # the sinks' level, set by setup_daemon_logging
    _active: list[LineBatch] = []

    def __init__(self, schedule: Callable[[Callable[[], None]], object]) -> None:
        self._schedule = schedule        # run fn at the end of this loop turn
        self._lines: list[tuple[str, str]] = []   # (level, formatted line)
        self._second = -1
        self._stamp = ""
        self._thread = threading.get_ident()
        LineBatch._active.append(self)

    def log(self, level: str, message: str) -> None:
        floor = LineBatch.level_no
        if floor is None or threading.get_ident() != self._thread:
            logger.log(level, message)
            return
        no = _LEVEL_NO.get(level)
        if no is None:
            no = _LEVEL_NO[level] = logger.level(level).no
        if no < floor:
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        if not self._lines:
            self._schedule(self.flush)
        millis = min(int((now - second) * 1000), 999)
        self._lines.append((level, f"{self._stamp}.{millis:03d} {level: <7} {message}\n"))
        if len(self._lines) >= _BATCH_LINES:
            self.flush()        # a long turn (an adoption of 10,000) keeps the log current

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        start = 0
        for i in range(1, len(lines) + 1):
            if i == len(lines) or lines[i][0] != lines[start][0]:
                text = "".join(line for _level, line in lines[start:i])
                logger.opt(raw=True).log(lines[start][0], text)
                start = i

    def close(self) -> None:
        """Write what is pending; from now on each line goes to loguru at once."""
        self.flush()
        self._thread = -1
        if self in LineBatch._active:
            LineBatch._active.remove(self)

    @classmethod
    def flush_all(cls) -> None:
        """Before any other record: the pending lines of the loop's thread go first."""
        for batch in cls._active:
            if batch._lines and threading.get_ident() == batch._thread:
                batch.flush()


def open_output(path: str, owner: tuple[int, int] | None = None) -> int:
    """Open (creating it and its directory) an output file for a worker to append to; never
    through a planted symlink, never a FIFO or device (see safefs). The caller closes it.

    A log file is its worker's: created here for it, or already owned by the uid the worker
    runs as (root's for a worker without ``user:``). Anything else is refused, so nobody can
    get another file handed over by putting it (another worker's log, the config) at the
    path. ``owner`` (uid, gid): a worker run as another user; a file made for it is chown'ed
    on the open fd, mode 0600 (0640 would let its group read it, and ``group:`` may be a
    shared one). Rotation backups copy the live file's owner and mode."""
    return open_output_new(path, owner)[0]


def output_mode(owner: tuple[int, int] | None) -> int:
    """The mode of a log file made for a worker (see open_output)."""
    return 0o640 if owner is None else 0o600


class OutputFileError(OSError):
    """An output file that cannot be opened or made (its directory cannot be made, say):
    str() names the file, so a spawn's failure is not blamed on its command."""

    def __str__(self) -> str:
        return str(self.strerror)


def open_output_new(path: str, owner: tuple[int, int] | None = None) -> tuple[int, bool]:
    """open_output, and whether this call created the file."""
    try:
        fd, created = safefs.open_append(path, output_mode(owner))
    except safefs.UnsafePathError:
        raise
    except OSError as e:
        raise OutputFileError(e.errno, f"cannot open its output file {path}: "
                                       f"{e.strerror or e}") from e
    try:
        uid = os.geteuid() if owner is None else owner[0]
        if not created and os.fstat(fd).st_uid != uid:
            raise safefs.UnsafePathError(path, (
                f"is owned by uid {os.fstat(fd).st_uid}, not by the worker's uid {uid}; it was "
                "not made for this worker (remove it, or give the worker a file of its own)"))
        if owner is not None and created:
            os.fchown(fd, *owner)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


LAST_LINE_READ = 4096       # bytes read from a log's end for its last line
LAST_LINE_SHOWN = 200       # characters of it shown


def last_line(path: str) -> str | None:
    """The last non-empty line of a log file (at most LAST_LINE_SHOWN characters, control
    characters shown as ?), None if there is none or the file cannot be read safely. Opened
    like rotation opens it (no planted link, no FIFO), and only its end is read."""
    try:
        dfd = safefs.LOG_DIRS.open(os.path.dirname(os.path.abspath(path)), 0o755)
        try:
            fd = safefs.open_existing(dfd, os.path.basename(path), path)
        finally:
            os.close(dfd)
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, LAST_LINE_READ, max(0, size - LAST_LINE_READ))
        finally:
            os.close(fd)
    except OSError:
        return None
    lines = [ln for ln in data.split(b"\n") if ln.strip()]
    if not lines:
        return None
    text = lines[-1].decode("utf-8", "replace").strip()
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:LAST_LINE_SHOWN] + ("..." if len(text) > LAST_LINE_SHOWN else "")


# A backup holds at most this much of the live file's end: a worker can make its log any size
# (ftruncate on its stdout), and the copy runs on the daemon's loop.
MAX_BACKUP_COPY = 64 * 1024 * 1024


def rotate_if_larger(path: str, max_bytes: int, backups: int) -> None:
    """If path holds more than max_bytes: copy it to path.1 (shifting older backups up to
    path.<backups>), then truncate it in place. All through one directory fd, and no link is
    followed. A backup gets the live file's owner and mode, and at most the last
    max(2 * max_bytes, MAX_BACKUP_COPY) bytes. When the backup cannot be made (a full disk,
    something planted where a backup goes) what was made of it is removed and the file is
    truncated all the same: losing old output beats losing all new output."""
    dfd = safefs.LOG_DIRS.open(os.path.dirname(os.path.abspath(path)), 0o755)
    try:
        name = os.path.basename(path)
        fd = safefs.open_existing(dfd, name, path, os.O_RDWR)
        try:
            st = os.fstat(fd)
            if st.st_size <= max_bytes:
                return
            failed = (_backup(dfd, name, fd, st, backups, max(2 * max_bytes, MAX_BACKUP_COPY))
                      if backups > 0 else None)
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
    if failed is not None:
        raise OSError(failed.errno, f"could not keep a backup ({failed}); truncated it anyway "
                                    "so that new output is kept")


def _exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _backup(dfd: int, name: str, fd: int, st: os.stat_result, backups: int,
            most: int) -> OSError | None:
    """Shift name.1.. up by one (only the ones that exist: a huge ``backups`` costs nothing)
    and copy the last ``most`` bytes of fd to a new name.1. Returns what went wrong (nothing
    half-made is left), never raises OSError."""
    try:
        first_free = 1
        while first_free < backups and _exists(dfd, f"{name}.{first_free}"):
            first_free += 1
        for i in range(first_free - 1, 0, -1):
            os.rename(f"{name}.{i}", f"{name}.{i + 1}", src_dir_fd=dfd, dst_dir_fd=dfd)
        backup = f"{name}.1"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(backup, dir_fd=dfd)     # backups == 1, or one planted since the shift
        out = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                      | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    except OSError as e:
        return e
    try:
        if os.geteuid() == 0:
            os.fchown(out, st.st_uid, st.st_gid)
        os.fchmod(out, stat.S_IMODE(st.st_mode))
        offset = max(0, st.st_size - most)
        if offset:
            os.write(out, f"[pyvisor: the first {offset} bytes of this log were not kept]\n"
                     .encode())
        remaining = st.st_size - offset
        while remaining > 0:
            n = os.copy_file_range(fd, out, remaining, offset)   # out: its own position
            if n == 0:
                break
            remaining -= n
            offset += n
    except OSError as e:
        os.close(out)
        with contextlib.suppress(OSError):
            os.unlink(backup, dir_fd=dfd)
        return e
    os.close(out)
    return None


@dataclass(slots=True)
class _Watched:
    path: str
    max_bytes: int
    backups: int
    users: int = 1
    wd: int = -1
    retry: float = 0.0      # seconds to the next try to arm a watch that failed; 0: armed


class Rotator:
    """Keeps every watched output file at most ~max_bytes (checked when inotify says it grew)."""

    def __init__(self, loop: Loop, recheck: float = 1.0) -> None:
        self._loop = loop
        self._recheck = recheck
        libc = ctypes.CDLL(None, use_errno=True)
        self._add_watch: Callable[[int, bytes, int], int] = libc.inotify_add_watch
        self._rm_watch: Callable[[int, int], int] = libc.inotify_rm_watch
        self._fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._files: dict[str, _Watched] = {}
        self._by_wd: dict[int, _Watched] = {}
        self._later: deque[_Watched] = deque()
        loop.add_reader(self._fd, self._on_events)

    def watch(self, path: str, max_bytes: int, backups: int, size: int | None = None,
              later: bool = False) -> None:
        """Keep path at most ~max_bytes from now on. size: its size as the caller just found
        it on an open fd (a spawn's new or reopened log file): within max_bytes there is
        nothing to rotate yet and only the watch is armed. Otherwise path is checked (and
        rotated) now, or with ``later`` from the loop, a slice per turn (adoption: 10,000
        files that need not be looked at before the daemon serves its socket; what is
        written meanwhile is rotated with the rest)."""
        if max_bytes <= 0:
            return
        w = self._files.get(path)
        if w is not None:
            w.users += 1
            return
        w = self._files[path] = _Watched(path, max_bytes, backups)
        if size is not None and size <= max_bytes:
            # armed, then its size looked at once more: what its writer wrote between that
            # open and the watch (a spawned worker writes at once) made no event
            self._arm(w)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_size <= max_bytes:
                    return
        if not later:
            self._check(w)
            return
        self._later.append(w)
        if len(self._later) == 1:
            self._loop.call_later(0, self._check_later)

    def _check_later(self) -> None:
        end = time.monotonic() + _LATER_SLICE
        while self._later and time.monotonic() < end:
            w = self._later.popleft()
            if self._files.get(w.path) is w:        # not unwatched in the meantime
                self._check(w)
        if self._later:
            self._loop.call_later(0, self._check_later)

    def unwatch(self, path: str) -> None:
        w = self._files.get(path)
        if w is None:
            return
        w.users -= 1
        if w.users <= 0:
            del self._files[path]
            if self._by_wd.get(w.wd) is w:      # armed: the kernel holds a watch for it
                del self._by_wd[w.wd]
                self._rm_watch(self._fd, w.wd)  # a fired one-shot watch is gone by itself

    def _arm(self, w: _Watched) -> None:
        """Watch w's file for its next write. When there is no file at its name (moved or
        removed for a moment, by its worker in a directory it owns, or by an operator) try
        again later, from ``recheck`` up to 16 times it: a worker writes into the file it
        was given whatever its name, and a file put back at the name must not grow for
        ever unrotated."""
        if self._files.get(w.path) is not w:
            return
        wd = self._add_watch(self._fd, os.fsencode(w.path),
                             _IN_MODIFY | _IN_ONESHOT | _IN_DONT_FOLLOW)
        if wd < 0:
            if not w.retry:
                logger.warning(f"log rotation: cannot watch {w.path}: "
                               f"{os.strerror(ctypes.get_errno())}; trying again until it "
                               "can")
            w.retry = min(2 * w.retry, 16 * self._recheck) if w.retry else self._recheck
            self._loop.call_later(w.retry, lambda: self._check(w))
            return
        if w.retry:
            logger.info(f"log rotation: watching {w.path} again")
            w.retry = 0.0
        w.wd = wd
        self._by_wd[wd] = w

    def _check(self, w: _Watched) -> None:
        if self._files.get(w.path) is not w:
            return          # unwatched since (its instance's files were closed)
        try:
            rotate_if_larger(w.path, w.max_bytes, w.backups)
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning(f"log rotation of {w.path}: {e}")
        self._arm(w)

    def _on_events(self, _mask: int) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        pos = 0
        fired: list[_Watched] = []
        while pos + _EVENT.size <= len(data):
            wd, _m, _cookie, length = _EVENT.unpack_from(data, pos)
            pos += _EVENT.size + length
            w = self._by_wd.pop(wd, None)
            if w is not None:
                fired.append(w)
        for w in fired:
            # rate limit: look again (and re-arm) after `recheck` seconds
            self._loop.call_later(self._recheck, lambda w=w: self._check(w))  # type: ignore[misc]

    def close(self) -> None:
        self._loop.remove(self._fd)
        os.close(self._fd)
