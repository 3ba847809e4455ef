"""The daemon's side of a control block (layout v2): create both pages, take over a ctl page an
earlier daemon left, post commands, read what the worker published.

Rules:
  * The ctl page is the daemon's alone: created O_EXCL, owned by the daemon's euid, mode 0600
    (0640 with the worker's group under ``user:``). The daemon maps it read-write; the worker
    maps it read-only. Only root and the daemon's uid can open it for writing, so only they can
    truncate it. A worker running as root (no ``user:``) can do anything root can, including
    that: run untrusted workers with ``user:``. As a last guard every store first checks the
    page's size on the fd and leaves a page that is no longer whole alone; all reads of the ctl
    page go through os.pread, never through the mapping.
  * The status page is the worker's (mode 0600, its owner under ``user:``) and is NEVER mapped
    by the daemon: it is read with os.pread on an fd, so a truncated, deleted or scribbled page
    can only yield "unknown" values (0 / None), never a SIGBUS or an exception.
  * The daemon holds no fd of a block (10,000 workers must fit its RLIMIT_NOFILE with one fd
    each, their pidfd). The ctl page's fd is closed once it is mapped; whether the page is
    still whole is asked of its name (the same object, by device and inode, and its size: only
    root and the daemon's uid can unlink or truncate it). The status page is opened by name
    for each read (or once for a batch, ``reading()``), checked on the fd (a regular file,
    owned by the uid it was made for) and closed again: a worker that replaced it with
    anything else (a FIFO, a directory, a link, someone else's file) reads as unknown.
  * Both pages are allocated (posix_fallocate) before the first store: a full /dev/shm is an
    ENOSPC from create(), never a SIGBUS later.
  * The magic is written LAST with a release store, so a reader that sees it sees every
    line-0 field and the status page's name.
"""

from __future__ import annotations

import os
import stat
import time
from types import TracebackType
from typing import Self

from worker._ctlword import View
from worker._mapping import Mapping
from worker.block import (
    BLOCK_SIZE,
    EXIT_SRC_WORKER,
    HEADER_SIZE,
    MAGIC,
    OFF_BLOCK_SIZE,
    OFF_BOOT_ID,
    OFF_CMD,
    OFF_CONFIG_HASH,
    OFF_DEADLINE,
    OFF_EPOCH,
    OFF_HEADER_SIZE,
    OFF_INCARNATION,
    OFF_MAGIC,
    OFF_SLOT,
    OFF_SPAWNED_PGID,
    OFF_SPAWNED_PID,
    OFF_SPAWNED_START,
    OFF_SPAWNED_UID,
    OFF_STATUS_NAME,
    OFF_SUPERVISOR_PID,
    OFF_VERSION,
    PID_MAX,
    SEQ_MASK,
    SHM_DIR,
    SOFF_ACK,
    SOFF_BUSY_SINCE,
    SOFF_EXIT_SEQ,
    SOFF_EXIT_SOURCE,
    SOFF_EXIT_STATUS,
    SOFF_EXIT_TIME,
    SOFF_HEARTBEAT,
    SOFF_PID,
    SOFF_START_TICKS,
    SOFF_WORK_DONE,
    ST_INIT,
    STATE_NAMES,
    STATUS_SIZE,
    VERSION,
    BlockError,
    ExitRecord,
    _to_i32,
    _u32,
    _u64,
    check_header,
    read_boot_id,
    status_name_ok,
    unlink_name,
)
from worker.published import WorkerData, fd_reader, read_worker_data


def _new_page(name: str, size: int, mode: int) -> int:
    """Create an shm object O_EXCL and allocate its pages now: a full /dev/shm is an ENOSPC
    here, never a SIGBUS at the first store. Returns the fd (read-write)."""
    path = SHM_DIR + name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.posix_fallocate(fd, 0, size)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd

# The ctl page's modes: the daemon's uid may write (a daemon that is not root must reopen it
# read-write when it adopts); the worker's group (under ``user:``) may only read.
CTL_MODE = 0o600
CTL_MODE_GROUP = 0o640
assert OFF_SPAWNED_UID + 4 <= HEADER_SIZE, "open_existing reads the spawn uid from the header"


class ControlBlock:
    """The daemon's side of a block: the ctl page mapped read-write for stores (reads by
    pread), the status page read with os.pread on an fd and never mapped (see the rules
    above)."""

    name: str

    def __init__(self, name: str, fd: int, status_name: str, status_owner: int | None,
                 st: os.stat_result | None = None) -> None:
        # Use create() or open_existing(). Maps the ctl page, then closes fd (on success only:
        # on an exception the caller still owns it). st: fd's fstat, if the caller made one.
        self.name = name
        self.status_name = status_name
        self._status_owner = status_owner     # uid the status page must have; None: unusable
        self._sfd = -1                        # held only inside reading()
        self._readers = 0
        self._whole: bool | None = None      # intact() as checked on entering reading()
        self._mm = Mapping(fd, BLOCK_SIZE)
        try:
            self.view = View(self._mm.buf)
        except BaseException:
            self._mm.close()
            raise
        if st is None:
            st = os.fstat(fd)
        self._id = (st.st_dev, st.st_ino)
        self._attached = False
        os.close(fd)

    # -- life cycle --------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, *, slot: int, supervisor_pid: int, epoch: int, uid: int |
               None = None, gid: int | None = None, at: str | None = None) -> ControlBlock:
        """Both pages of a new block (FileExistsError if the ctl name exists; OSError, e.g.
        ENOSPC, if they cannot be made). uid/gid: the worker's (``user:``): the status page its
        own, the ctl page readable by its group. at: the ctl page made there, to be renamed."""
        status_name = f"{name}.{os.urandom(8).hex()}"
        sfd = _new_page(status_name, STATUS_SIZE, 0o600)
        try:
            if uid is not None:
                os.fchown(sfd, uid, -1 if gid is None else gid)
            fd = _new_page(at or name, BLOCK_SIZE, 0o600)
        except BaseException:
            os.close(sfd)
            unlink_name(status_name)
            raise
        try:
            if gid is not None:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, CTL_MODE_GROUP if gid is not None else CTL_MODE)
            blk = cls(name, fd, status_name, os.geteuid() if uid is None else uid)
        except BaseException:
            os.close(fd)
            os.close(sfd)
            unlink_name(at or name)
            unlink_name(status_name)
            raise
        os.close(sfd)
        v, mm = blk.view, blk._mm
        v.store_u32(OFF_VERSION, VERSION)
        v.store_u32(OFF_HEADER_SIZE, HEADER_SIZE)
        v.store_u32(OFF_BLOCK_SIZE, BLOCK_SIZE)
        v.store_u32(OFF_SLOT, slot)
        mm[OFF_BOOT_ID : OFF_BOOT_ID + 16] = read_boot_id()
        raw = status_name.encode("ascii")
        mm[OFF_STATUS_NAME : OFF_STATUS_NAME + len(raw)] = raw
        v.store_u32(OFF_SUPERVISOR_PID, supervisor_pid)
        v.store_u64(OFF_EPOCH, epoch)
        v.store_u64(OFF_MAGIC, MAGIC)  # last, release: publishes everything above
        return blk

    @classmethod
    def open_existing(cls, name: str, fd: int, st: os.stat_result | None = None
                      ) -> ControlBlock:
        """Take over a ctl page an earlier daemon left, from an fd the caller opened and
        checked (ours, a regular file, BLOCK_SIZE bytes; st: that fstat). BlockError if its
        header is not a valid one of this boot. The status page is opened if it is still there
        (else its values read as unknown); it is never mapped."""
        head = os.pread(fd, HEADER_SIZE, 0)
        status_name = check_header(name, head)
        # (the header holds the spawn record too: no second read)
        recorded = int.from_bytes(head[OFF_SPAWNED_UID:OFF_SPAWNED_UID + 4], "little")
        owner: int | None = None
        try:
            sst = os.stat(SHM_DIR + status_name, follow_symlinks=False)
            if stat.S_ISREG(sst.st_mode) and sst.st_uid in (recorded, os.geteuid()):
                owner = sst.st_uid
        except OSError:
            owner = None
        return cls(name, fd, status_name, owner, st)

    @classmethod
    def attach(cls, name: str) -> ControlBlock:
        """Open an existing block by name from the daemon's side (tools and tests; adoption
        checks more, see supervisor.adopt). FileNotFoundError if there is none; BlockError if
        it is not a whole, valid layout-v2 block of this boot."""
        try:
            fd = os.open(SHM_DIR + name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(2, f"control block {name} does not exist") from None
        try:
            size = os.fstat(fd).st_size
            if size < BLOCK_SIZE:
                raise BlockError(f"control block {name}: size is {size} bytes, expected at "
                                 f"least {BLOCK_SIZE} (truncated, or not a pyvisor block)")
            return cls.open_existing(name, fd)
        except BaseException:
            os.close(fd)
            raise

    @property
    def has_status(self) -> bool:
        """Whether the status page was there, ours or the worker's (when adopting, it may be
        gone)."""
        return self._status_owner is not None

    def intact(self) -> bool:
        """Whether the ctl page is still the object we mapped, whole (stores are safe)."""
        if self._mm.closed:
            return False
        try:
            st = os.stat(SHM_DIR + self.name, follow_symlinks=False)
        except (OSError, ValueError):
            return False
        return (st.st_dev, st.st_ino) == self._id and st.st_size >= BLOCK_SIZE

    def close(self) -> None:
        """Unmap (idempotent). BufferError while a wait on the block is in flight."""
        if not self.view.closed:
            self.view.close()
        if not self._mm.closed:
            self._mm.close()
        if self._sfd >= 0:
            os.close(self._sfd)
            self._sfd = -1

    @property
    def closed(self) -> bool:
        return self.view.closed

    def unlink(self) -> None:
        """Remove both names from /dev/shm (a missing name is fine)."""
        unlink_name(self.name)
        if status_name_ok(self.name, self.status_name):
            unlink_name(self.status_name)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ControlBlock {self.name}{' closed' if self.closed else ''}>"

    # -- the ctl page (the daemon's) -------------------------------------------------------

    def post_command(self, cmd: int, deadline_ns: int = 0) -> int:
        """Post a command (args first, then the cmd word seq_cst, then a wake); new seq.
        A ctl page that is no longer whole is left alone (0): the worker broke it."""
        if not 0 <= cmd <= 0xFF:
            raise ValueError(f"command {cmd} out of range 0..255")
        if not self.intact():
            return 0
        v = self.view
        v.store_u64(OFF_DEADLINE, deadline_ns)
        seq = ((v.load_u32(OFF_CMD) >> 8) + 1) & SEQ_MASK
        v.store_u32_seq_cst(OFF_CMD, (seq << 8) | cmd)
        v.wake(OFF_CMD)
        return seq

    def set_spawned(self, pid: int, start_ticks: int, incarnation: int,
                    config_hash: int = 0, uid: int = 0, pgid: int = 0) -> None:
        """Record the identity of the process spawned for this block (adoption believes only
        this)."""
        if not self.intact():
            return
        v = self.view
        v.store_u64(OFF_CONFIG_HASH, config_hash)
        v.store_u64(OFF_INCARNATION, incarnation)
        v.store_u64(OFF_SPAWNED_START, start_ticks)
        v.store_u32(OFF_SPAWNED_UID, uid)
        v.store_u32(OFF_SPAWNED_PGID, pgid)
        v.store_u32(OFF_SPAWNED_PID, pid)

    def _ctl(self, off: int, size: int) -> int:
        """A field of the ctl page, through the mapping once the page is known to be whole
        (0 when it is not; inside reading(), as checked on entering it)."""
        if self._mm.closed:
            raise ValueError(f"control block {self.name} is closed")
        if not (self._whole if self._whole is not None else self.intact()):
            return 0
        return self.view.load_u32(off) if size == 4 else self.view.load_u64(off)

    @property
    def slot(self) -> int:
        return self._ctl(OFF_SLOT, 4)

    @property
    def boot_id(self) -> bytes:
        return self._mm[OFF_BOOT_ID : OFF_BOOT_ID + 16] if self.intact() else b""

    @property
    def supervisor_pid(self) -> int:
        return self._ctl(OFF_SUPERVISOR_PID, 4)

    @property
    def spawned_pid(self) -> int:
        return self._ctl(OFF_SPAWNED_PID, 4)

    @property
    def spawned_start_ticks(self) -> int:
        return self._ctl(OFF_SPAWNED_START, 8)

    @property
    def spawned_uid(self) -> int:
        return self._ctl(OFF_SPAWNED_UID, 4)

    @property
    def spawned_pgid(self) -> int:
        return self._ctl(OFF_SPAWNED_PGID, 4)

    @property
    def config_hash(self) -> int:
        return self._ctl(OFF_CONFIG_HASH, 8)

    @property
    def incarnation(self) -> int:
        return self._ctl(OFF_INCARNATION, 8)

    @property
    def epoch(self) -> int:
        return self._ctl(OFF_EPOCH, 8)

    @property
    def deadline_ns(self) -> int:
        return self._ctl(OFF_DEADLINE, 8)

    @property
    def cmd(self) -> tuple[int, int]:
        """(seq, cmd) of the command word."""
        w = self._ctl(OFF_CMD, 4)
        return w >> 8, w & 0xFF

    # -- the status page (the worker's; pread only, every value range-checked) ---------------

    def _open_status(self) -> int:
        """An fd of the status page, checked: a regular file owned by the uid it was made for
        (-1 when it is not, or gone). The caller closes it."""
        if self._status_owner is None:
            return -1
        try:
            fd = os.open(SHM_DIR + self.status_name,
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError):
            return -1
        try:
            st = os.fstat(fd)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_uid != self._status_owner:
            os.close(fd)
            return -1
        return fd

    def reading(self) -> _Reading:
        """``with block.reading():`` several reads through one open of the status page and one
        check of the ctl page."""
        return _Reading(self)

    def _status(self, off: int, size: int) -> bytes:
        fd = self._sfd if self._sfd >= 0 else self._open_status()
        if fd < 0:
            return b""
        try:
            raw = os.pread(fd, size, off)
        except (OSError, ValueError):
            raw = b""
        finally:
            if fd != self._sfd:
                os.close(fd)
        return raw if len(raw) == size else b""

    def _snum(self, off: int, size: int) -> int:
        return int.from_bytes(self._status(off, size) or bytes(size), "little")

    @property
    def ack(self) -> tuple[int, int]:
        """(acked_seq, state) of the ack word; (0, ST_INIT) when unknown or garbage."""
        w = self._snum(SOFF_ACK, 4)
        return (w >> 8, w & 0xFF) if (w & 0xFF) in STATE_NAMES else (0, ST_INIT)

    @property
    def pid(self) -> int:
        """The pid the worker published when it attached; 0 when unknown or out of range."""
        p = self._snum(SOFF_PID, 4)
        return p if 1 <= p <= PID_MAX else 0

    @property
    def attached(self) -> bool:
        """Whether the worker ever published its pid (latched: the page is not read again)."""
        if not self._attached:
            self._attached = self.pid != 0
        return self._attached

    @property
    def attached_latched(self) -> bool:
        """Whether ``attached`` is known true already (no read)."""
        return self._attached

    @property
    def start_ticks(self) -> int:
        return self._snum(SOFF_START_TICKS, 8)

    @property
    def heartbeat_ns(self) -> int:
        """Monotonic ns of the last heartbeat; 0 when unknown or in the future."""
        hb = self._snum(SOFF_HEARTBEAT, 8)
        return hb if hb <= time.monotonic_ns() else 0

    @property
    def work_done(self) -> int:
        return self._snum(SOFF_WORK_DONE, 8)

    @property
    def busy_since_ns(self) -> int:
        t = self._snum(SOFF_BUSY_SINCE, 8)
        return t if t <= time.monotonic_ns() else 0

    def read_exit(self) -> ExitRecord | None:
        """The exit record, or None if none was written, the page is gone or garbage, or the
        seqlock does not settle within a bounded number of tries."""
        with self.reading():
            return self._read_exit()

    def _read_exit(self) -> ExitRecord | None:
        for _ in range(100):
            raw = self._status(SOFF_EXIT_SEQ, 24)
            if not raw:
                return None
            s1 = _u32(raw, 0)
            if s1 & 1:
                os.sched_yield()
                continue
            if self._status(SOFF_EXIT_SEQ, 4) != raw[:4]:
                continue
            status = _to_i32(_u32(raw, SOFF_EXIT_STATUS - SOFF_EXIT_SEQ))
            t = _u64(raw, SOFF_EXIT_TIME - SOFF_EXIT_SEQ)
            source = _u32(raw, SOFF_EXIT_SOURCE - SOFF_EXIT_SEQ)
            if source != EXIT_SRC_WORKER or not -64 <= status <= 255:
                return None
            return ExitRecord(status, t, source)
        return None

    def worker_data(self) -> WorkerData | None:
        """The status text and metrics the worker published (bounded, torn-read safe, names
        validated: see worker.published); None without a readable status page."""
        with self.reading():
            return read_worker_data(fd_reader(self._sfd)) if self._sfd >= 0 else None


class _Reading:
    """The status page held open for the reads inside a ``with`` (nestable)."""

    def __init__(self, block: ControlBlock) -> None:
        self.block = block

    def __enter__(self) -> ControlBlock:
        b = self.block
        if b._readers == 0:
            b._sfd = b._open_status()
            b._whole = b.intact()     # the ctl page checked once for the reads inside
        b._readers += 1
        return b

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        b = self.block
        b._readers -= 1
        if b._readers == 0:
            b._whole = None
            if b._sfd >= 0:
                os.close(b._sfd)
                b._sfd = -1
