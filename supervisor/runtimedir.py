"""Stale files in the runtime directory (/run/pyvisor or $XDG_RUNTIME_DIR/pyvisor): the locks
(``<key>.sock.lock``, ``prefix-<prefix>.lock``) and locators (``<key>.json``) that a daemon
which was SIGKILLed or crashed could not remove. A daemon removes its own at exit; at start it
removes the stale ones others left, safely:

- only in the runtime directory, which must be ours alone (safefs.private_dir);
- only regular files owned by our euid, opened with O_NOFOLLOW (never through a link);
- a lock only while we hold its flock ourselves (nobody holds it: its daemon is gone), and
  only if the name still leads to the file we locked (a daemon that just made a new one keeps
  it; daemon._flock re-checks the same way, so a lock removed under a starting daemon only
  makes it try again);
- a locator only when the pid it names is gone, judged in the PID namespace it was written
  in (from another, every pid of it looks gone: a daemon that is PID 1 of a container would
  remove the host daemons' locators);
- at most MAX_ENTRIES entries looked at. Intent files are left: they are for the next daemon
  of their config.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat

from supervisor import paths, safefs

MAX_ENTRIES = 10_000


def _is_lock(name: str) -> bool:
    return name.endswith(".lock") and (name.startswith("prefix-") or name.endswith(".sock.lock"))


def _is_locator(name: str) -> bool:
    return (name.endswith(".json") and len(name) == 17
            and all(c in "0123456789abcdef" for c in name[:12]))


def clean_stale() -> list[str]:
    """Remove the stale locks and locators; returns the names removed."""
    try:
        dfd = safefs.private_dir(paths.runtime_dir(), create=False)
    except OSError:
        return []
    removed: list[str] = []
    try:
        for i, name in enumerate(os.listdir(dfd)):
            if i >= MAX_ENTRIES:
                break
            remove = (_remove_lock if _is_lock(name) else
                      _remove_locator if _is_locator(name) else None)
            if remove is not None and remove(dfd, name):
                removed.append(name)
    finally:
        os.close(dfd)
    return removed


def _open_ours(dfd: int, name: str) -> int | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        os.close(fd)
        return None
    return fd


def _same(dfd: int, name: str, fd: int) -> bool:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False


def _remove_lock(dfd: int, name: str) -> bool:
    fd = _open_ours(dfd, name)
    if fd is None:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False            # held: its daemon runs
        if not _same(dfd, name, fd):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)
        return True
    finally:
        os.close(fd)


def _remove_locator(dfd: int, name: str) -> bool:
    fd = _open_ours(dfd, name)
    if fd is None:
        return False
    try:
        try:
            doc = json.loads(os.read(fd, paths.MAX_LOCATOR))
        except (OSError, ValueError, RecursionError):
            return False
        pid = doc.get("pid") if isinstance(doc, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or paths.pid_alive(pid):
            return False
        if doc.get("pidns", paths.pid_namespace()) != paths.pid_namespace():
            return False                # another namespace's pid: not ours to judge
        if not _same(dfd, name, fd):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)
        return True
    finally:
        os.close(fd)
