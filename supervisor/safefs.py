"""Opening files in directories that someone else may be able to write, without being fooled.

The daemon runs as root, and log directories, /tmp and runtime directories are untrusted
(a worker running as another user may own its log directory). The rules, for every path the
daemon opens for writing or reads state from:

1. A path is walked one component at a time from ``/`` with ``O_NOFOLLOW|O_DIRECTORY`` and
   directory fds (``openat``), never resolved by the kernel in one go.
2. A symbolic link is followed only when nobody but root or the daemon's user could have put
   it there: the link is owned by root or our euid, and so is the directory holding it, which
   nobody else can write. Anything else is refused (``UnsafePathError``), so a planted link in
   a directory a worker owns can never make root create, append to, rename or truncate a file
   elsewhere.
3. The last component is opened with ``O_NOFOLLOW|O_NONBLOCK`` (a FIFO never blocks the loop)
   and checked on the open fd: a regular file, one link (no hard link to a file elsewhere).
4. Files the daemon keeps for itself (lock, locator, re-exec state) live in a directory owned
   by its euid that nobody else can write (``private_dir``), and are created with ``O_EXCL``
   and renamed into place.

``UnsafePathError`` is an ``OSError``, so callers that already turn OSError into a clear
message (a spawn failure, a refused start) need nothing more.
"""

from __future__ import annotations

import _thread
import errno
import os
import stat

# Only modules that cost supervisorctl's start-up nothing (it reads the locator through here):
# no contextlib (try/except instead), threading (its lock is _thread's), struct (imported for
# a directory with an ACL) or fcntl (os.set_blocking).

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 16     # symlinks followed in one walk (the kernel's ELOOP limit is 40)


class UnsafePathError(OSError):
    """A path the daemon refuses to use; str() says which and why."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.EPERM, f"{path}: {why}")
        self.path = path
        self.why = why

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


def _trusted_uid(uid: int) -> bool:
    return uid == 0 or uid == os.geteuid()


_ACL_USER, _ACL_GROUP, _ACL_WRITE = 0x02, 0x08, 0x02
_ACL_ENTRY, _ACL_ENTRY_SIZE = "<HHI", 8     # tag, perm, id (after a 4-byte version header)


def _others_can_write(st: os.stat_result, fd: int) -> bool:
    """Can anyone but root and the owner add, remove or rename entries of this directory?
    Group-writable counts unless the group is root's (a group of the daemon's may have other
    members); so does a POSIX ACL entry that gives write to a named user or group."""
    if st.st_mode & stat.S_IWOTH:
        return True
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
        return True
    try:
        acl = os.getxattr(fd, "system.posix_acl_access")
    except OSError:
        return False          # no ACL (ENODATA), or none supported here
    import struct

    for off in range(4, len(acl) - _ACL_ENTRY_SIZE + 1, _ACL_ENTRY_SIZE):
        tag, perm, ident = struct.unpack_from(_ACL_ENTRY, acl, off)
        if tag in (_ACL_USER, _ACL_GROUP) and perm & _ACL_WRITE and ident != 0 and not (
                tag == _ACL_USER and ident == os.geteuid()):
            return True
    return False


def _safe_ancestor(st: os.stat_result, fd: int) -> bool:
    """A directory on the way to one the daemon trusts: nobody else can swap what is in it
    (owned by root or us, and writable by others only if sticky, like /tmp)."""
    return _trusted_uid(st.st_uid) and (
        bool(st.st_mode & stat.S_ISVTX) or not _others_can_write(st, fd))


def _describe_owner(st: os.stat_result) -> str:
    return f"owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"


def open_dir(path: str, create: bool = False, mode: int = 0o755,
             chain: bool = False) -> int:
    """An fd of the directory ``path`` (absolute, or taken from the cwd), walked by rule 1 and
    2; missing directories are made (``mode``) when ``create``. ``chain``: every directory on
    the way must be one nobody else can swap entries of (_safe_ancestor), so that the path
    keeps meaning this directory for path-based calls (bind, chown) later. The caller closes
    it."""
    path = os.path.abspath(path)
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", _DIR_FLAGS)
    links = 0
    walked = ""
    try:
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            here = os.path.dirname(walked) if name == ".." else f"{walked}/{name}"
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:  # noqa: SIM105 -- contextlib is not imported here (see above)
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise UnsafePathError(here, "is not a directory") from None
                parent = os.fstat(fd)
                if not _trusted_uid(st.st_uid) or not _trusted_uid(parent.st_uid) or (
                        _others_can_write(parent, fd)):
                    raise UnsafePathError(here, (
                        f"is a symbolic link that another user could have planted (link "
                        f"owned by uid {st.st_uid}, in a directory {_describe_owner(parent)}); "
                        "refusing to follow it: use the real path")) from None
                links += 1
                if links > _MAX_LINKS:
                    raise UnsafePathError(path, "too many symbolic links") from None
                target = os.readlink(name, dir_fd=fd)
                parts = [p for p in target.split("/") if p] + parts
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR_FLAGS)
                    walked = ""
                continue
            os.close(fd)
            fd = nfd
            walked = here
            if chain and parts and not _safe_ancestor(os.fstat(fd), fd):
                raise UnsafePathError(walked, (
                    f"is {_describe_owner(os.fstat(fd))}: another user could swap what is in "
                    "it; use a path whose every directory only root or uid "
                    f"{os.geteuid()} can change"))
        return fd
    except BaseException:
        os.close(fd)
        raise


_LINK = "is a symbolic link; refusing to follow it"
_DIRECTORY = "is a directory, not a file"


def _refuse_special(e: OSError, path: str) -> None:
    """Turn what O_NOFOLLOW|O_NONBLOCK says about a link or a FIFO into a clear refusal."""
    if e.errno == errno.ELOOP:
        raise UnsafePathError(path, _LINK) from None
    if e.errno == errno.ENXIO:
        raise UnsafePathError(path, "is a FIFO or a device, not a regular file; refusing to "
                                    "use it") from None
    if e.errno == errno.EISDIR:     # else "cannot start 'prog': Is a directory: 'name'"
        raise UnsafePathError(path, _DIRECTORY) from None


def _not_a_log_file(st: os.stat_result) -> str | None:
    """Why a file of this lstat/fstat is not one to append a worker's output to."""
    if stat.S_ISLNK(st.st_mode):
        return _LINK
    if stat.S_ISDIR(st.st_mode):
        return _DIRECTORY
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a FIFO, device or socket); refusing to use it"
    if st.st_nlink > 1:
        return f"has {st.st_nlink} hard links; refusing to write to a file that is also elsewhere"
    return None


def _check_regular(fd: int, path: str) -> os.stat_result:
    st = os.fstat(fd)
    why = _not_a_log_file(st)
    if why is not None:
        raise UnsafePathError(path, why)
    return st


class DirCache:
    """Directory fds kept for the many files of few directories (1,000 workers' logs in one
    log_dir): walking the path again for every spawn costs a dozen opens. A kept fd is the
    directory that was walked and checked; it is used again only while the path still leads
    to that very directory (one stat), so a directory swapped or replaced since is walked
    (and checked) afresh. At most ``size`` fds. Thread-safe: log files are also opened on the
    spawner's helper thread (runtime/outputs.py)."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._fds: dict[str, tuple[int, int, int]] = {}
        self._lock = _thread.allocate_lock()

    def open(self, path: str, mode: int) -> int:
        """A dup of the fd of directory path (made if missing); the caller closes it."""
        with self._lock:
            return self._open(path, mode)

    def _open(self, path: str, mode: int) -> int:
        hit = self._fds.get(path)
        if hit is not None:
            fd, dev, ino = hit
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    return os.dup(fd)
            except OSError:
                pass
            self._drop(path)
        fd = open_dir(path, create=True, mode=mode)
        if len(self._fds) >= self.size:
            self._drop(next(iter(self._fds)))
        st = os.fstat(fd)
        self._fds[path] = (fd, st.st_dev, st.st_ino)
        return os.dup(fd)

    def _drop(self, path: str) -> None:
        fd, _dev, _ino = self._fds.pop(path)
        os.close(fd)

    def clear(self) -> None:
        with self._lock:
            for path in list(self._fds):
                self._drop(path)


LOG_DIRS = DirCache()


def open_append(path: str, mode: int = 0o640, dir_mode: int = 0o755) -> tuple[int, bool]:
    """Open (creating, and making its directory) a file to append to, by the rules above:
    (fd, whether this call created it). The fd is blocking again when returned (it is handed
    to a worker). Files of /proc and /sys are refused. The caller closes it."""
    dfd = LOG_DIRS.open(os.path.dirname(os.path.abspath(path)), dir_mode)
    name = os.path.basename(path)
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
             | os.O_NOCTTY)
    try:
        try:
            fd, created = os.open(name, flags | os.O_CREAT | os.O_EXCL, mode, dir_fd=dfd), True
        except FileExistsError:
            fd, created = os.open(name, flags, dir_fd=dfd), False
    except OSError as e:
        _refuse_special(e, path)
        raise
    finally:
        os.close(dfd)
    try:
        st = _check_regular(fd, path)
        if st.st_dev in _kernel_filesystems():
            raise UnsafePathError(path, "is a file of /proc or /sys, not a log file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def dir_refusal(path: str) -> str | None:
    """Why open_dir(path, create=True) would refuse path as it is now; None: it would not
    (a missing directory is made then). Creates nothing: for ``--check``."""
    try:
        os.close(open_dir(path))
    except OSError as e:
        return _refusal(e, path)
    return None


def _refusal(e: OSError, path: str) -> str | None:
    if isinstance(e, UnsafePathError):
        return str(e)
    return None if isinstance(e, FileNotFoundError) else f"{path}: {e.strerror}"


def log_file_refusal(path: str) -> str | None:
    """Why open_append would refuse the file at path as it is now, its directory aside
    (dir_refusal); None: it would not, or the file is not there yet. For ``--check``: an
    lstat, nothing opened or made."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    why = _not_a_log_file(st)
    return None if why is None else str(UnsafePathError(path, why))

_KERNEL_FS: set[int] = set()


def _kernel_filesystems() -> set[int]:
    if not _KERNEL_FS:
        for where in ("/proc", "/sys"):
            try:  # noqa: SIM105 -- contextlib is not imported here (see above)
                _KERNEL_FS.add(os.stat(where).st_dev)
            except OSError:
                pass
    return _KERNEL_FS


def open_existing(dfd: int, name: str, path: str, flags: int = os.O_RDONLY) -> int:
    """Open an existing regular file ``name`` in the directory ``dfd`` (never a link, FIFO or
    device). ``path`` is for messages. The caller closes it."""
    try:
        fd = os.open(name, flags | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                     dir_fd=dfd)
    except OSError as e:
        _refuse_special(e, path)
        raise
    try:
        _check_regular(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(dfd: int, name: str, path: str) -> int:
    """Open (creating, 0600) a read-write file of ours in the directory ``dfd``: never a link,
    FIFO or device, and owned by our euid. The caller closes it."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_NOCTTY, 0o600, dir_fd=dfd)
    except OSError as e:
        _refuse_special(e, path)
        raise
    try:
        st = _check_regular(fd, path)
        if st.st_uid != os.geteuid():
            raise UnsafePathError(path, f"is owned by uid {st.st_uid}, not {os.geteuid()}; "
                                        "remove it")
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_dir(path: str, create: bool = True) -> int:
    """An fd of a directory only we use: made 0700 when missing, else it must be ours
    (owner = euid) and nobody else may write it. The caller closes it."""
    path = os.path.abspath(path)
    parent = open_dir(os.path.dirname(path), create=create, mode=0o755, chain=True)
    try:
        name = os.path.basename(path)
        if create:
            try:  # noqa: SIM105 -- contextlib is not imported here (see above)
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                pass
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(path, "is not a directory (a symbolic link or a file); "
                                            "remove it") from None
            raise
    finally:
        os.close(parent)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise UnsafePathError(path, f"is {_describe_owner(st)}: another user made it, so it "
                                    "cannot be ours; set XDG_RUNTIME_DIR to a directory of "
                                    f"uid {os.geteuid()} (or have root remove it)")
    if st.st_mode & 0o022 or _others_can_write(st, fd):
        os.close(fd)
        raise UnsafePathError(path, f"is {_describe_owner(st)}: others can write it; make it "
                                    f"0700 (chmod 700 {path})")
    return fd


def trusted_dir(path: str, create: bool = False, what: str = "the control socket") -> int:
    """An fd of a directory that only root or our euid can change (where the daemon keeps its
    socket, lock and re-exec state); UnsafePathError for one that others can write (such as
    /tmp), since they could plant links or files under the names the daemon uses."""
    fd = open_dir(path, create=create, mode=0o700, chain=True)
    st = os.fstat(fd)
    if not _trusted_uid(st.st_uid) or _others_can_write(st, fd):
        os.close(fd)
        raise UnsafePathError(path, f"is {_describe_owner(st)}: other users can write it; put "
                                    f"{what} in a directory only uid "
                                    f"{os.geteuid()} can write")
    return fd


def write_atomic(dfd: int, name: str, data: bytes, mode: int = 0o600,
                 durable: bool = False) -> None:
    """Replace ``name`` in the directory ``dfd`` with ``data``: written to a new file made
    with O_EXCL, then renamed over it (readers see the old or the new, never half)."""
    tmp = f".{name}.{os.getpid()}.tmp"
    try:  # noqa: SIM105 -- contextlib is not imported here (see above)
        os.unlink(tmp, dir_fd=dfd)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode, dir_fd=dfd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp, dir_fd=dfd)
        raise
    os.close(fd)
    os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    if durable:
        os.fsync(dfd)


def read_small(dfd: int, name: str, path: str, limit: int, owner: int | None = None) -> bytes:
    """The content of a regular file of at most ``limit`` bytes (owned by ``owner`` when
    given); UnsafePathError otherwise."""
    fd = open_existing(dfd, name, path)
    try:
        st = os.fstat(fd)
        if owner is not None and st.st_uid != owner:
            raise UnsafePathError(path, f"is owned by uid {st.st_uid}, not {owner}; ignoring it")
        if st.st_size > limit:
            raise UnsafePathError(path, f"is {st.st_size} bytes, more than {limit}; ignoring it")
        return os.read(fd, limit + 1)[:limit]
    finally:
        os.close(fd)


def read_secret(path: str, limit: int) -> bytes:
    """The content of an operator's secret file (a token): a regular file, never through a
    link, in a directory chain nobody else can swap, owned by root or our euid, not writable
    by its group or others, not readable by others, at most ``limit`` bytes. UnsafePathError
    says what is wrong and what to do."""
    path = os.path.abspath(path)
    dfd = open_dir(os.path.dirname(path), chain=True)
    try:
        dst = os.fstat(dfd)
        if not _safe_ancestor(dst, dfd):
            raise UnsafePathError(os.path.dirname(path), (
                f"is {_describe_owner(dst)}: another user could swap the file in it; keep "
                f"the file in a directory only root or uid {os.geteuid()} can write"))
        fd = open_existing(dfd, os.path.basename(path), path)
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not _trusted_uid(st.st_uid):
            raise UnsafePathError(path, f"is {_describe_owner(st)}; it must be root's or uid "
                                        f"{os.geteuid()}'s: chown {os.geteuid()} {path}")
        if mode & 0o026:
            raise UnsafePathError(path, f"is {_describe_owner(st)}: others can change or read "
                                        f"it; chmod 600 {path} (or 640 for a group)")
        if st.st_size > limit:
            raise UnsafePathError(path, f"is {st.st_size} bytes, more than {limit}")
        return os.read(fd, limit + 1)[:limit]
    finally:
        os.close(fd)
