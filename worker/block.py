"""Control block layout v2 seen from Python: names, constants, header checks, the exit record.

A block is two 4096-byte POSIX shared-memory objects per worker instance, both created by the
daemon, ONE WRITER PER OBJECT:

  * the ctl page, named "/<prefix>.<instance>" (what $PYVISOR_BLOCK names): the daemon's. Its
    header, the command word and its arguments, and the identity the daemon recorded at spawn
    (pid, start ticks, uid, process group, config hash) and the status page's name. The worker
    maps it read-only and waits on the command word there (futex waits work on read-only
    mappings). The daemon's side is worker.ctlpage.ControlBlock.
  * the status page, "/<prefix>.<instance>.<16 random hex digits>" (unguessable, so nobody can
    squat it): the worker's. Ack word, pid, start ticks, heartbeat, work done, busy-since, the
    exit record, a status text and named metrics. The daemon never maps it.

Fields are little-endian and naturally aligned, grouped in 64-byte lines. Workers access them
through worker._ctlword (acquire loads, release stores), never through struct on a mapping.

Rules:
  * Attaching checks the fstat size BEFORE mapping: touching a mapping past the end of a
    truncated object is SIGBUS, which no Python code can catch.
  * A block carries the boot_id of the boot that created it; a block left in /dev/shm from
    before a reboot (e.g. a tmpfs that survived in a container) is refused, because its
    pids and start times mean nothing any more.
"""

from __future__ import annotations

import os
import time

import posix_ipc

from worker import _ctlword as _c
from worker._ctlword import View

# Every worker imports this module, and its start-up and exit time grow with each module
# loaded: only os, time and posix_ipc here (no re, uuid, dataclasses, typing).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from worker.ctlpage import ControlBlock as ControlBlock

# The layout is defined once, in worker/ctlblock.h; the native module is compiled from it and
# hands its constants over. Daemon and workers use these names.
MAGIC = _c.MAGIC  # b"PYSTCLB2" little-endian
VERSION = _c.VERSION
HEADER_SIZE = _c.HEADER_SIZE
BLOCK_SIZE = _c.BLOCK_SIZE  # the ctl page
STATUS_SIZE = _c.STATUS_SIZE  # the status page

# ctl page (daemon-owned), line 0: immutable after init
OFF_MAGIC = _c.OFF_MAGIC
OFF_VERSION = _c.OFF_VERSION
OFF_HEADER_SIZE = _c.OFF_HEADER_SIZE
OFF_BLOCK_SIZE = _c.OFF_BLOCK_SIZE
OFF_SLOT = _c.OFF_SLOT
OFF_BOOT_ID = _c.OFF_BOOT_ID  # 16 bytes
# ctl page, line 1: commands
OFF_CMD = _c.OFF_CMD  # u32 futex word: seq24 << 8 | cmd8
OFF_REQUEST_BITS = _c.OFF_REQUEST_BITS
OFF_DEADLINE = _c.OFF_DEADLINE  # u64 CLOCK_MONOTONIC ns, 0 = none
OFF_SUPERVISOR_PID = _c.OFF_SUPERVISOR_PID
OFF_EPOCH = _c.OFF_EPOCH
OFF_INCARNATION = _c.OFF_INCARNATION
# ctl page, line 2: the identity recorded at spawn; then the status page's name
OFF_SPAWNED_PID = _c.OFF_SPAWNED_PID
OFF_SPAWNED_UID = _c.OFF_SPAWNED_UID
OFF_SPAWNED_START = _c.OFF_SPAWNED_START
OFF_SPAWNED_PGID = _c.OFF_SPAWNED_PGID
OFF_CONFIG_HASH = _c.OFF_CONFIG_HASH  # u64: hash of the worker config it was spawned with
OFF_STATUS_NAME = _c.OFF_STATUS_NAME  # NUL-terminated
STATUS_NAME_SIZE = _c.STATUS_NAME_SIZE
# status page (worker-owned)
SOFF_ACK = _c.SOFF_ACK  # u32 futex word: acked_seq24 << 8 | state8
SOFF_PID = _c.SOFF_PID
SOFF_START_TICKS = _c.SOFF_START_TICKS
SOFF_HEARTBEAT = _c.SOFF_HEARTBEAT
SOFF_WORK_DONE = _c.SOFF_WORK_DONE
SOFF_BUSY_SINCE = _c.SOFF_BUSY_SINCE
SOFF_EXIT_SEQ = _c.SOFF_EXIT_SEQ  # exit record under a seqlock
SOFF_EXIT_STATUS = _c.SOFF_EXIT_STATUS  # i32, stored as u32
SOFF_EXIT_TIME = _c.SOFF_EXIT_TIME
SOFF_EXIT_SOURCE = _c.SOFF_EXIT_SOURCE
SOFF_TEXT_SEQ = _c.SOFF_TEXT_SEQ  # status text under its own seqlock
SOFF_TEXT_LEN = _c.SOFF_TEXT_LEN
SOFF_TEXT = _c.SOFF_TEXT
TEXT_SIZE = _c.TEXT_SIZE
SOFF_METRICS = _c.SOFF_METRICS  # METRIC_COUNT x {name[METRIC_NAME_SIZE], u64}
METRIC_COUNT = _c.METRIC_COUNT
METRIC_SIZE = _c.METRIC_SIZE
METRIC_NAME_SIZE = _c.METRIC_NAME_SIZE
SOFF_METRIC_KINDS = _c.SOFF_METRIC_KINDS  # one kind byte per metric slot, stored last
SOFF_APP = _c.SOFF_APP  # free for the application
METRIC_FREE = _c.METRIC_FREE
METRIC_COUNTER = _c.METRIC_COUNTER
METRIC_GAUGE = _c.METRIC_GAUGE
METRIC_KIND_NAMES = {METRIC_COUNTER: "counter", METRIC_GAUGE: "gauge"}

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
U64_MAX = (1 << 64) - 1


def deadline_ns(deadline: float) -> int:
    """A deadline in seconds as the block's u64 nanoseconds, clamped (the config bounds
    timeouts, but the block must never be handed a number it cannot hold)."""
    ns = deadline * 1e9
    return U64_MAX if not ns < U64_MAX else max(int(ns), 0)


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


_WORD_PLUS: dict[str, frozenset[str]] = {}     # more -> _WORD_CHARS | set(more)


def _is_word(s: str, max_len: int, more: str) -> bool:
    """s matches [A-Za-z0-9_][A-Za-z0-9_<more>]{0,max_len-1}. (The characters are checked
    by one set operation in C: every spawn names its block through here, twice.)"""
    allowed = _WORD_PLUS.get(more)
    if allowed is None:
        allowed = _WORD_PLUS[more] = _WORD_CHARS | frozenset(more)
    return 0 < len(s) <= max_len and s[0] in _WORD_CHARS and allowed.issuperset(s)


# NAME_MAX of /dev/shm, without the leading "/", less what the status page's name adds
_NAME_MAX = 255 - 17
PREFIX_RULE = "1-128 characters from A-Z a-z 0-9 _ - (not starting with -; no . or /)"


def metric_name_ok(name: str) -> bool:
    """1..METRIC_NAME_SIZE characters of [A-Za-z0-9_], not starting with a digit (as in
    ctlblock.h's pyvisor_metric_name_ok; it becomes part of a Prometheus series name)."""
    return (
        0 < len(name) <= METRIC_NAME_SIZE
        and name.isascii()
        and name.replace("_", "a").isalnum()
        and not name[0].isdigit()
    )


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


def list_blocks(prefix: str, entries: list[str] | None = None) -> list[str]:
    """Shm names ("/..." form) under /dev/shm that look like ctl pages of this prefix:
    "/prefix.name:digits" (status pages, "...:digits.<hex>", are not listed). ``entries``:
    a listing of /dev/shm the caller already made."""
    start = prefix + "."
    if entries is None:
        try:
            entries = os.listdir(SHM_DIR)
        except OSError:
            return []
    found = []
    for e in entries:
        if not e.startswith(start):
            continue
        _name, sep, index = e[len(start) :].rpartition(":")
        if sep and index.isdecimal() and index.isascii():
            found.append("/" + e)
    return sorted(found)


def unlink_name(name: str) -> None:
    """Remove a block's name from /dev/shm without attaching to it; a missing name is fine."""
    try:  # noqa: SIM105 -- contextlib.suppress would be one more import for every worker
        posix_ipc.unlink_shared_memory(name)
    except (posix_ipc.ExistentialError, OSError):
        pass      # gone, or something else under the name (a directory a worker made)


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
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProcessLookupError(pid, f"no process with pid {pid}") from None
    try:
        return parse_start_ticks(os.read(fd, 4096).decode("utf-8", "replace"))
    finally:
        os.close(fd)


def _to_i32(u: int) -> int:
    return u - (1 << 32) if u & 0x80000000 else u


def _u32(buf: bytes, off: int) -> int:
    return int.from_bytes(buf[off : off + 4], "little")


def _u64(buf: bytes, off: int) -> int:
    return int.from_bytes(buf[off : off + 8], "little")


PID_MAX = 4194304  # the kernel's PID_MAX_LIMIT: no pid read from a page is ever larger


def status_name_ok(ctl_name: str, status_name: str) -> bool:
    """Whether status_name follows the naming rule: ctl_name + "." + 16 lowercase hex digits
    (checked before the daemon opens or unlinks a name it read from a page)."""
    token = status_name[len(ctl_name) + 1 :]
    return (status_name.startswith(ctl_name + ".") and len(token) == 16
            and not token.strip("0123456789abcdef"))    # nothing but those 16 characters


def check_header(name: str, head: bytes) -> str:
    """Validate a ctl page's header (its first HEADER_SIZE bytes); returns the status page's
    name. BlockError says what is wrong."""
    if len(head) < HEADER_SIZE:
        raise BlockError(f"control block {name}: size is {len(head)} bytes, expected "
                         f"{BLOCK_SIZE} (truncated, or not a pyvisor block)")
    magic = _u64(head, OFF_MAGIC)
    if magic == 0:
        raise BlockError(f"control block {name}: not initialised (magic is 0; being created?)")
    if magic != MAGIC:
        raise BlockError(
            f"control block {name}: wrong magic {magic:#018x} (not a pyvisor block, or "
            f"corrupted; expected {MAGIC:#018x})"
        )
    checks = (
        ("layout version", OFF_VERSION, VERSION),
        ("header size", OFF_HEADER_SIZE, HEADER_SIZE),
        ("block size", OFF_BLOCK_SIZE, BLOCK_SIZE),
    )
    for what, off, want in checks:
        got = _u32(head, off)
        if got != want:
            raise BlockError(
                f"control block {name}: {what} is {got:#x}, expected {want:#x} "
                "(written by an incompatible pyvisor version?)"
            )
    boot = head[OFF_BOOT_ID : OFF_BOOT_ID + 16]
    if boot != read_boot_id():
        raise BlockError(
            f"control block {name}: created during another boot (boot_id "
            f"{format_uuid(boot)}); it is left over from before a reboot, remove it"
        )
    raw = head[OFF_STATUS_NAME : OFF_STATUS_NAME + STATUS_NAME_SIZE].partition(b"\0")[0]
    status = raw.decode("ascii", "replace")
    if not status_name_ok(name, status):
        raise BlockError(f"control block {name}: names no valid status page ({status!r})")
    return status


def write_exit(view: View, status: int, source: int) -> None:
    """Write the exit record in a status page (status: code >= 0 or -signal), stamped with
    CLOCK_REALTIME. The worker's side."""
    if not -(1 << 31) <= status < (1 << 31):
        raise OverflowError(f"exit status {status} does not fit an i32")
    # The odd seq goes in with a seq_cst RMW and the fields with release stores, so no
    # field store becomes visible before the odd seq; the final release publishes them.
    s = view.load_u32(SOFF_EXIT_SEQ)
    odd = (s + (2 if s & 1 else 1)) & 0xFFFFFFFF  # odd already: a writer died mid-write
    view.exchange_u32(SOFF_EXIT_SEQ, odd)
    view.store_u32(SOFF_EXIT_STATUS, status & 0xFFFFFFFF)
    view.store_u64(SOFF_EXIT_TIME, time.time_ns())  # CLOCK_REALTIME
    view.store_u32(SOFF_EXIT_SOURCE, source)
    view.store_u32(SOFF_EXIT_SEQ, (odd + 1) & 0xFFFFFFFF)


def __getattr__(name: str) -> object:
    # The daemon's side lives in worker.ctlpage, which no worker process needs to load.
    if name == "ControlBlock":
        from worker.ctlpage import ControlBlock

        return ControlBlock
    raise AttributeError(f"module 'worker.block' has no attribute {name!r}")
