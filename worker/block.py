"""Control block layout v1 seen from Python: create, attach, validate, read and write fields.

One 4096-byte POSIX shared-memory object per worker instance, created by the daemon and
attached by the worker. Fields are little-endian, naturally aligned and grouped by writer
in 64-byte lines; every field has exactly one writer. All accesses go through
worker._ctlword (acquire loads, release stores), never through struct on the mapping.

Rules:
  * create() sizes the object once (O_CREAT|O_EXCL, 0600) and writes the magic LAST with a
    release store, so a reader that sees the magic sees every line-0 field.
  * attach() opens with size 0 (posix_ipc would truncate an existing object if given a size
    with O_CREAT) and checks the fstat size BEFORE mapping: touching a mapping past the end
    of a truncated object is SIGBUS, which no Python code can catch.
  * A block carries the boot_id of the boot that created it; a block left in /dev/shm from
    before a reboot (e.g. a tmpfs that survived in a container) is refused, because its
    pids and start times mean nothing any more.
"""

from __future__ import annotations

import mmap
import os
import time

import posix_ipc

from worker import _ctlword as _c
from worker._ctlword import View

# Every worker imports this module, and its start-up and exit time grow with each module
# loaded: only os, time, mmap and posix_ipc here (no re, uuid, dataclasses, typing).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

# The layout is defined once, in worker/ctlblock.h; the native module is compiled from it and
# hands its constants over. Daemon and workers use these names.
MAGIC = _c.MAGIC  # b"PYSTCLB1" little-endian
VERSION = _c.VERSION
HEADER_SIZE = _c.HEADER_SIZE
BLOCK_SIZE = _c.BLOCK_SIZE

# line 0: daemon, immutable after init
OFF_MAGIC = _c.OFF_MAGIC
OFF_VERSION = _c.OFF_VERSION
OFF_HEADER_SIZE = _c.OFF_HEADER_SIZE
OFF_BLOCK_SIZE = _c.OFF_BLOCK_SIZE
OFF_SLOT = _c.OFF_SLOT
OFF_BOOT_ID = _c.OFF_BOOT_ID  # 16 bytes
# line 1: daemon
OFF_CMD = _c.OFF_CMD  # u32 futex word: seq24 << 8 | cmd8
OFF_REQUEST_BITS = _c.OFF_REQUEST_BITS
OFF_DEADLINE = _c.OFF_DEADLINE  # u64 CLOCK_MONOTONIC ns, 0 = none
OFF_SUPERVISOR_PID = _c.OFF_SUPERVISOR_PID
OFF_SPAWNED_PID = _c.OFF_SPAWNED_PID
OFF_EPOCH = _c.OFF_EPOCH
OFF_INCARNATION = _c.OFF_INCARNATION
OFF_SPAWNED_START = _c.OFF_SPAWNED_START
OFF_CONFIG_HASH = _c.OFF_CONFIG_HASH  # u64: hash of the worker config it was spawned with
# line 2: worker
OFF_ACK = _c.OFF_ACK  # u32 futex word: acked_seq24 << 8 | state8
OFF_PID = _c.OFF_PID
OFF_START_TICKS = _c.OFF_START_TICKS
# line 4: worker
OFF_HEARTBEAT = _c.OFF_HEARTBEAT
OFF_WORK_DONE = _c.OFF_WORK_DONE
OFF_BUSY_SINCE = _c.OFF_BUSY_SINCE
# line 6: exit record under a seqlock (the worker writes it as it exits)
OFF_EXIT_SEQ = _c.OFF_EXIT_SEQ
OFF_EXIT_STATUS = _c.OFF_EXIT_STATUS  # i32, stored as u32
OFF_EXIT_TIME = _c.OFF_EXIT_TIME
OFF_EXIT_SOURCE = _c.OFF_EXIT_SOURCE
OFF_APP = _c.OFF_APP  # free for the application

CMD_NONE = _c.CMD_NONE
CMD_STOP_GRACEFUL = _c.CMD_STOP_GRACEFUL

ST_INIT = _c.ST_INIT
ST_STARTING = _c.ST_STARTING
ST_READY = _c.ST_READY
ST_BUSY = _c.ST_BUSY
ST_STOPPING = _c.ST_STOPPING
ST_EXITED = _c.ST_EXITED

EXIT_SRC_NONE = _c.EXIT_SRC_NONE  # no exit record yet
EXIT_SRC_WORKER = _c.EXIT_SRC_WORKER  # written by the worker as it exits

# The environment the daemon gives every worker it starts.
ENV_BLOCK = _c.ENV_BLOCK  # the shm name of its control block
ENV_INSTANCE = _c.ENV_INSTANCE  # its instance name, "name:index"
ENV_NOTIFY = _c.ENV_NOTIFY  # the daemon's notify socket ("@name": abstract)

SEQ_MASK = 0xFFFFFF
CMD_NAMES = {CMD_NONE: "NONE", CMD_STOP_GRACEFUL: "STOP_GRACEFUL"}
STATE_NAMES = {
    ST_INIT: "INIT",
    ST_STARTING: "STARTING",
    ST_READY: "READY",
    ST_BUSY: "BUSY",
    ST_STOPPING: "STOPPING",
    ST_EXITED: "EXITED",
}

SHM_DIR = "/dev/shm"
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _is_word(s: str, max_len: int, more: str) -> bool:
    """s matches [A-Za-z0-9_][A-Za-z0-9_<more>]{0,max_len-1}."""
    return (0 < len(s) <= max_len and s[0] in _WORD_CHARS
            and all(c in _WORD_CHARS or c in more for c in s))


_NAME_MAX = 255  # NAME_MAX of /dev/shm, without the leading "/"
PREFIX_RULE = "1-128 characters from A-Z a-z 0-9 _ - (not starting with -; no . or /)"


def valid_prefix(prefix: str) -> bool:
    """Whether prefix may start block names (see PREFIX_RULE). No dot: a block is named
    prefix + "." + instance, and list_blocks() finds a daemon's blocks by that dot, so a prefix
    "app" must never match another daemon's "app.x" blocks."""
    return _is_word(prefix, 128, "-")


class BlockError(Exception):
    """A control block that cannot be used; str() names the block and what is wrong."""


class ExitRecord:
    """How a process ended, as recorded in its block."""

    __slots__ = ("source", "status", "time_ns")

    def __init__(self, status: int, time_ns: int, source: int) -> None:
        self.status = status  # exit code >= 0, or -signal
        self.time_ns = time_ns  # CLOCK_REALTIME ns
        self.source = source  # EXIT_SRC_*

    def _key(self) -> tuple[int, int, int]:
        return (self.status, self.time_ns, self.source)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExitRecord) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"ExitRecord(status={self.status}, time_ns={self.time_ns}, source={self.source})"


def shm_name(prefix: str, instance: str) -> str:
    """The shm name of an instance's block: "/" + prefix + "." + instance.

    prefix: see valid_prefix();
    instance: "name:index" with name [A-Za-z0-9_][A-Za-z0-9_.-]{0,63} and index digits.
    """
    if not valid_prefix(prefix):
        raise ValueError(f"invalid control block prefix {prefix!r}: use {PREFIX_RULE}")
    name, sep, index = instance.partition(":")
    if not sep or not _is_word(name, 64, ".-") or not index.isdecimal() or not index.isascii():
        raise ValueError(
            f"invalid instance name {instance!r}: expected 'name:index' with name matching "
            "[A-Za-z0-9_][A-Za-z0-9_.-]{0,63} and index a decimal number, e.g. 'web:0'"
        )
    full = f"/{prefix}.{instance}"
    if len(full) - 1 > _NAME_MAX:
        raise ValueError(f"control block name {full!r} is longer than {_NAME_MAX} characters")
    return full


def list_blocks(prefix: str) -> list[str]:
    """Shm names ("/..." form) of the blocks under /dev/shm that start with "/prefix."."""
    start = prefix + "."
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted("/" + e for e in entries if e.startswith(start))


def unlink_name(name: str) -> None:
    """Remove a block's name from /dev/shm without attaching to it; a missing name is fine."""
    try:  # noqa: SIM105 -- contextlib.suppress would be one more import for every worker
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


_boot_id: bytes | None = None


def read_boot_id() -> bytes:
    """This boot's id (16 bytes) from /proc/sys/kernel/random/boot_id (read once)."""
    global _boot_id
    if _boot_id is None:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            _boot_id = bytes.fromhex(f.read().strip().replace("-", ""))
    return _boot_id


def format_uuid(b: bytes) -> str:
    """16 bytes in the 8-4-4-4-12 form of /proc/sys/kernel/random/boot_id."""
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_start_ticks(stat: str) -> int:
    """Field 22 (starttime, clock ticks after boot) of a /proc/PID/stat line.

    Field 2 (comm) may hold spaces and parentheses, so split after the LAST ')'.
    """
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[22 - 3])


def proc_start_ticks(pid: int) -> int:
    """Start time of a process in clock ticks; ProcessLookupError if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return parse_start_ticks(f.read())
    except FileNotFoundError:
        raise ProcessLookupError(pid, f"no process with pid {pid}") from None


def _to_i32(u: int) -> int:
    return u - (1 << 32) if u & 0x80000000 else u


class ControlBlock:
    """A mapped control block. The daemon create()s, the worker attach()es."""

    name: str

    def __init__(self, name: str, mm: mmap.mmap) -> None:
        # Use create() or attach().
        self.name = name
        self._mm = mm
        self.view = View(mm)

    # -- life cycle --------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, *, slot: int, supervisor_pid: int, epoch: int) -> ControlBlock:
        """Create, size and initialise a new block; FileExistsError if the name exists."""
        try:
            shm = posix_ipc.SharedMemory(
                name, posix_ipc.O_CREAT | posix_ipc.O_EXCL, mode=0o600, size=BLOCK_SIZE
            )
        except posix_ipc.ExistentialError:
            raise FileExistsError(f"control block {name} already exists") from None
        try:
            mm = mmap.mmap(shm.fd, BLOCK_SIZE)
        finally:
            shm.close_fd()
        blk = cls(name, mm)
        v = blk.view
        v.store_u32(OFF_VERSION, VERSION)
        v.store_u32(OFF_HEADER_SIZE, HEADER_SIZE)
        v.store_u32(OFF_BLOCK_SIZE, BLOCK_SIZE)
        v.store_u32(OFF_SLOT, slot)
        mm[OFF_BOOT_ID : OFF_BOOT_ID + 16] = read_boot_id()
        v.store_u32(OFF_SUPERVISOR_PID, supervisor_pid)
        v.store_u64(OFF_EPOCH, epoch)
        v.store_u64(OFF_MAGIC, MAGIC)  # last, release: publishes everything above
        return blk

    @classmethod
    def attach(cls, name: str) -> ControlBlock:
        """Map an existing block (never truncating it) and validate its header.

        FileNotFoundError if there is no such block; BlockError if it is not a valid
        layout-v1 block of this boot.
        """
        try:
            shm = posix_ipc.SharedMemory(name, 0, size=0)
        except posix_ipc.ExistentialError:
            raise FileNotFoundError(
                2, f"control block {name} does not exist (is the worker's supervisor running?)"
            ) from None
        except posix_ipc.PermissionsError as e:
            raise PermissionError(13, f"control block {name}: {e}") from None
        try:
            size = os.fstat(shm.fd).st_size
            if size < BLOCK_SIZE:
                raise BlockError(
                    f"control block {name}: size is {size} bytes, expected at least "
                    f"{BLOCK_SIZE} (truncated, or not a pyvisor block)"
                )
            mm = mmap.mmap(shm.fd, BLOCK_SIZE)
        finally:
            shm.close_fd()
        blk = cls(name, mm)
        try:
            blk._validate()
        except BaseException:
            blk.close()
            raise
        return blk

    def _validate(self) -> None:
        v, n = self.view, self.name
        magic = v.load_u64(OFF_MAGIC)
        if magic == 0:
            raise BlockError(f"control block {n}: not initialised (magic is 0; being created?)")
        if magic != MAGIC:
            raise BlockError(
                f"control block {n}: wrong magic {magic:#018x} (not a pyvisor block, or "
                f"corrupted; expected {MAGIC:#018x})"
            )
        checks = (
            ("layout version", OFF_VERSION, VERSION),
            ("header size", OFF_HEADER_SIZE, HEADER_SIZE),
            ("block size", OFF_BLOCK_SIZE, BLOCK_SIZE),
        )
        for what, off, want in checks:
            got = v.load_u32(off)
            if got != want:
                raise BlockError(
                    f"control block {n}: {what} is {got:#x}, expected {want:#x} "
                    "(written by an incompatible pyvisor version?)"
                )
        boot = self.boot_id
        if boot != read_boot_id():
            raise BlockError(
                f"control block {n}: created during another boot (boot_id "
                f"{format_uuid(boot)}); it is left over from before a reboot, remove it"
            )

    def close(self) -> None:
        """Unmap (idempotent). BufferError while a wait on the block is in flight."""
        if not self.view.closed:
            self.view.close()
        if not self._mm.closed:
            self._mm.close()

    @property
    def closed(self) -> bool:
        return self.view.closed

    def unlink(self) -> None:
        """Remove the name from /dev/shm (mappings stay valid); a missing name is fine."""
        unlink_name(self.name)

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

    # -- daemon side ----------------------------------------------------------------------

    def post_command(self, cmd: int, deadline_ns: int = 0) -> int:
        """Post a command (args first, then the cmd word seq_cst, then a wake); new seq."""
        if not 0 <= cmd <= 0xFF:
            raise ValueError(f"command {cmd} out of range 0..255")
        v = self.view
        v.store_u64(OFF_DEADLINE, deadline_ns)
        seq = ((v.load_u32(OFF_CMD) >> 8) + 1) & SEQ_MASK
        v.store_u32_seq_cst(OFF_CMD, (seq << 8) | cmd)
        v.wake(OFF_CMD)
        return seq

    def set_spawned(self, pid: int, start_ticks: int, incarnation: int,
                    config_hash: int = 0) -> None:
        v = self.view
        v.store_u64(OFF_CONFIG_HASH, config_hash)
        v.store_u64(OFF_INCARNATION, incarnation)
        v.store_u64(OFF_SPAWNED_START, start_ticks)
        v.store_u32(OFF_SPAWNED_PID, pid)

    @property
    def slot(self) -> int:
        return self.view.load_u32(OFF_SLOT)

    @property
    def boot_id(self) -> bytes:
        return bytes(self._mm[OFF_BOOT_ID : OFF_BOOT_ID + 16])

    @property
    def supervisor_pid(self) -> int:
        return self.view.load_u32(OFF_SUPERVISOR_PID)

    @property
    def spawned_pid(self) -> int:
        return self.view.load_u32(OFF_SPAWNED_PID)

    @property
    def spawned_start_ticks(self) -> int:
        return self.view.load_u64(OFF_SPAWNED_START)

    @property
    def config_hash(self) -> int:
        return self.view.load_u64(OFF_CONFIG_HASH)

    @property
    def incarnation(self) -> int:
        return self.view.load_u64(OFF_INCARNATION)

    @property
    def epoch(self) -> int:
        return self.view.load_u64(OFF_EPOCH)

    @property
    def deadline_ns(self) -> int:
        return self.view.load_u64(OFF_DEADLINE)

    @property
    def cmd(self) -> tuple[int, int]:
        """(seq, cmd) of the command word."""
        w = self.view.load_u32(OFF_CMD)
        return w >> 8, w & 0xFF

    # -- worker side (read by the daemon) -----------------------------------------------

    @property
    def ack(self) -> tuple[int, int]:
        """(acked_seq, state) of the ack word."""
        w = self.view.load_u32(OFF_ACK)
        return w >> 8, w & 0xFF

    @property
    def pid(self) -> int:
        return self.view.load_u32(OFF_PID)

    @property
    def start_ticks(self) -> int:
        return self.view.load_u64(OFF_START_TICKS)

    @property
    def heartbeat_ns(self) -> int:
        return self.view.load_u64(OFF_HEARTBEAT)

    @property
    def work_done(self) -> int:
        return self.view.load_u64(OFF_WORK_DONE)

    @property
    def busy_since_ns(self) -> int:
        return self.view.load_u64(OFF_BUSY_SINCE)

    # -- exit record (seqlock) ----------------------------------------------------------

    def read_exit(self) -> ExitRecord | None:
        """The exit record, or None if none was written (source NONE)."""
        v = self.view
        for _ in range(10_000):
            s1 = v.load_u32(OFF_EXIT_SEQ)
            if s1 & 1:
                os.sched_yield()
                continue
            status = _to_i32(v.load_u32(OFF_EXIT_STATUS))
            t = v.load_u64(OFF_EXIT_TIME)
            source = v.load_u32(OFF_EXIT_SOURCE)
            # Acquire loads keep this re-read after the field reads.
            if v.load_u32(OFF_EXIT_SEQ) == s1:
                return None if source == EXIT_SRC_NONE else ExitRecord(status, t, source)
        raise BlockError(f"control block {self.name}: exit record writer stuck mid-write")

    def write_exit(self, status: int, source: int) -> None:
        """Write the exit record (status: code >= 0 or -signal) stamped with CLOCK_REALTIME."""
        if not -(1 << 31) <= status < (1 << 31):
            raise OverflowError(f"exit status {status} does not fit an i32")
        v = self.view
        # The odd seq goes in with a seq_cst RMW and the fields with release stores, so no
        # field store becomes visible before the odd seq; the final release publishes them.
        s = v.load_u32(OFF_EXIT_SEQ)
        odd = (s + (2 if s & 1 else 1)) & 0xFFFFFFFF  # odd already: a writer died mid-write
        v.exchange_u32(OFF_EXIT_SEQ, odd)
        v.store_u32(OFF_EXIT_STATUS, status & 0xFFFFFFFF)
        v.store_u64(OFF_EXIT_TIME, time.time_ns())  # CLOCK_REALTIME
        v.store_u32(OFF_EXIT_SOURCE, source)
        v.store_u32(OFF_EXIT_SEQ, (odd + 1) & 0xFFFFFFFF)
