"""The worker side of a control block: ``from worker import Worker``.

    with Worker() as w:                 # attach from $PYVISOR_BLOCK (set by supervisord)
        setup()
        w.ready()                       # state READY; the daemon is woken
        while not w.should_stop:        # one native load + compare, no syscall
            do_one_unit()
            w.heartbeat(); w.add_work()
    # leaving the block records the exit (status 0, or 1 on an exception) and EXITED

Rules:
  * The worker maps its ctl page (the daemon's: command word, deadline, identity) READ-ONLY and
    waits on the command word there; it writes only its status page (ack word, pid, start
    ticks, heartbeat, work, busy-since, exit record), whose name the ctl page holds.
  * ``should_stop`` is the hot path, implemented in C (worker._ctlword.Poller): when the
    command word's seq equals the last one handled it returns the latched flag; only a new
    seq calls back into Python (_on_command), which reads the arguments, acknowledges the
    command (ack word = acked seq + state, futex wake) and latches the stop. Seqs are 24
    bits and wrap: they are compared with ``!=`` only.
  * Once a stop is seen it stays seen; the state stays STOPPING until close() sets EXITED.
  * ``status(text)`` publishes a short text (at most TEXT_SIZE bytes of UTF-8, cut at a
    character boundary) under the text seqlock; ``counter(name)`` / ``gauge(name)`` return a
    named Metric (at most METRIC_COUNT per block, names of METRIC_NAME_SIZE characters from
    [A-Za-z0-9_]). The lookup is a native dict hit after the first call, and ``inc()`` one
    native atomic add, so ``w.counter("jobs").inc()`` may sit in the hot loop. Claiming a slot
    and writing the text happen under one lock (a worker may have threads).
  * ``wait_for_stop_async`` runs the futex wait in the default executor in slices of
    ASYNC_SLICE_S seconds, re-checking between slices: the event loop never blocks, a
    cancelled task returns at once (its thread finishes the current slice, then ends), and
    an idle worker costs a handful of wake-ups per second. A pure asyncio.sleep poll would
    have to trade wake-up latency against idle wake-ups; a futex in a thread has neither.
"""

from __future__ import annotations

import _socket  # the C module: `socket` loads enum, selectors and more, for one datagram
import _thread  # a lock without `threading`'s imports
import mmap
import os
import time

from worker._ctlword import Metric, Poller, View
from worker.block import (
    BLOCK_SIZE,
    CMD_NONE,
    CMD_STOP_GRACEFUL,
    ENV_BLOCK,
    ENV_INSTANCE,
    ENV_NOTIFY,
    EXIT_SRC_WORKER,
    HEADER_SIZE,
    METRIC_COUNT,
    METRIC_FREE,
    METRIC_KIND_NAMES,
    METRIC_NAME_SIZE,
    METRIC_SIZE,
    OFF_CMD,
    OFF_DEADLINE,
    SHM_DIR,
    SOFF_ACK,
    SOFF_BUSY_SINCE,
    SOFF_HEARTBEAT,
    SOFF_METRIC_KINDS,
    SOFF_METRICS,
    SOFF_PID,
    SOFF_START_TICKS,
    SOFF_TEXT,
    SOFF_TEXT_LEN,
    SOFF_TEXT_SEQ,
    SOFF_WORK_DONE,
    ST_BUSY,
    ST_EXITED,
    ST_READY,
    ST_STARTING,
    ST_STOPPING,
    STATE_NAMES,
    STATUS_SIZE,
    TEXT_SIZE,
    BlockError,
    check_header,
    metric_name_ok,
    proc_start_ticks,
    shm_name,
    write_exit,
)

TYPE_CHECKING = False  # typing is not imported at run time (see worker/block.py)
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

ASYNC_SLICE_S = 0.25
_SIGINT = 2  # signal.SIGINT on Linux; the signal module would load enum for one constant
_CLOSE_WAIT_S = 2.0


class WorkerError(RuntimeError):
    """The worker cannot attach to its control block (e.g. not started by supervisord)."""


def _resolve_name(name: str | None, prefix: str | None, instance: str | None) -> str:
    if name is not None:
        return name if name.startswith("/") else "/" + name
    if prefix is not None:
        if instance is None:
            raise WorkerError("Worker(prefix=...) also needs instance='name:index'")
        return shm_name(prefix, instance)
    env = os.environ.get(ENV_BLOCK)
    if not env:
        raise WorkerError(
            f"${ENV_BLOCK} is not set: this process was not started by supervisord. "
            "To attach by hand pass the block's name, e.g. "
            "Worker(name='/pyvisor-0123456789ab.web:0') (see: ls /dev/shm)"
        )
    return env


def _map_page(name: str, size: int, writable: bool) -> mmap.mmap:
    """Map an shm object by name, its size checked with fstat BEFORE mapping (no SIGBUS)."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(SHM_DIR + name, flags)
    except FileNotFoundError:
        raise FileNotFoundError(
            2, f"control block {name} does not exist (is the worker's supervisor running?)"
        ) from None
    except PermissionError as e:
        raise PermissionError(13, f"control block {name}: {e.strerror}") from None
    try:
        got = os.fstat(fd).st_size
        if got < size:
            raise BlockError(
                f"control block {name}: size is {got} bytes, expected at least "
                f"{size} (truncated, or not a pyvisor block)"
            )
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        return mmap.mmap(fd, size, access=access)
    finally:
        os.close(fd)


def attach_pages(name: str) -> tuple[mmap.mmap, mmap.mmap, str]:
    """(ctl page mapped read-only, status page mapped read-write, status page name).

    FileNotFoundError if there is no such block; BlockError if it is not a valid layout-v2
    block of this boot."""
    ctl = _map_page(name, BLOCK_SIZE, writable=False)
    try:
        status_name = check_header(name, ctl[:HEADER_SIZE])
        return ctl, _map_page(status_name, STATUS_SIZE, writable=True), status_name
    except BaseException:
        ctl.close()
        raise


class Worker(Poller):
    """A worker process's handle on its control block."""

    def __init__(
        self,
        name: str | None = None,
        *,
        prefix: str | None = None,
        instance: str | None = None,
    ) -> None:
        self.name = _resolve_name(name, prefix, instance)
        if instance is None:
            instance = os.environ.get(ENV_INSTANCE) if name is None and prefix is None else None
        self.instance: str = instance or self.name.partition(".")[2]
        self._ctl_mm, self._status_mm, self.status_name = attach_pages(self.name)
        self._ctl = View(self._ctl_mm)  # read-only: loads and futex waits only
        self._view = View(self._status_mm)
        self._state = ST_STARTING
        self._stop_cmd = CMD_NONE
        self._stop_deadline_ns: int | None = None
        self._closed = False
        self._publish_lock = _thread.allocate_lock()  # text seqlock writes, slot claims
        v = self._view
        try:
            v.store_u32(SOFF_PID, os.getpid())
            v.store_u64(SOFF_START_TICKS, proc_start_ticks(os.getpid()))
            # Commands acked by an earlier attach of this block stay handled; anything newer
            # (e.g. a stop posted before we got here) is seen by the first should_stop.
            self._poll_bind(self._ctl, OFF_CMD, v.load_u32(SOFF_ACK) >> 8)
            self._store_ack(wake=True)
        except BaseException:
            self._closed = True
            self._unmap()
            raise

    # -- state -------------------------------------------------------------------------

    def _store_ack(self, *, wake: bool) -> None:
        self._view.store_u32(SOFF_ACK, (self._poll_seq << 8) | self._state)
        if wake:
            self._view.wake(SOFF_ACK)

    def _set_state(self, state: int, *, wake: bool) -> None:
        if self._state in (ST_STOPPING, ST_EXITED) and state != ST_EXITED:
            return  # a stop, once seen, is never undone
        self._state = state
        self._store_ack(wake=wake)

    def _on_command(self, word: int) -> bool:
        """Slow path of should_stop: a command with a new seq arrived. Ack it."""
        seq, cmd = word >> 8, word & 0xFF
        self._poll_seq = seq
        if cmd == CMD_STOP_GRACEFUL:
            deadline = self._ctl.load_u64(OFF_DEADLINE)
            self._stop_cmd = cmd
            self._stop_deadline_ns = deadline or None
            self._poll_stop = True
            if self._state != ST_EXITED:
                self._state = ST_STOPPING
        self._store_ack(wake=True)
        return bool(self._poll_stop)

    @property
    def state(self) -> int:
        """ST_* as last published in the ack word."""
        return self._state

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self._state, str(self._state))

    @property
    def stop_command(self) -> int:
        """CMD_STOP_GRACEFUL once a stop was seen, else CMD_NONE."""
        return self._stop_cmd if self.should_stop else CMD_NONE

    @property
    def stop_deadline_ns(self) -> int | None:
        """CLOCK_MONOTONIC ns by which the daemon wants us gone (None: no deadline/stop)."""
        return self._stop_deadline_ns if self.should_stop else None

    def stop_time_left(self) -> float | None:
        """Seconds left until the stop deadline (may be negative), None without one."""
        d = self.stop_deadline_ns
        return None if d is None else (d - time.monotonic_ns()) / 1e9

    # -- lifecycle ------------------------------------------------------------------------

    def ready(self) -> None:
        """Publish READY (futex wake on the ack word) and nudge the daemon's notify socket."""
        self._set_state(ST_READY, wake=True)
        _notify_ready(os.environ.get(ENV_NOTIFY))

    def heartbeat(self) -> None:
        self._view.store_u64(SOFF_HEARTBEAT, time.monotonic_ns())

    def add_work(self, n: int = 1) -> None:
        self._view.fetch_add_u64(SOFF_WORK_DONE, n)

    @property
    def work_done(self) -> int:
        return self._view.load_u64(SOFF_WORK_DONE)

    # -- published data: status text, counters, gauges ----------------------------------

    def status(self, text: str) -> None:
        """Publish a short status text ("loading model 3/5"); "" clears it. Longer than
        TEXT_SIZE bytes of UTF-8, it is cut at a character boundary."""
        raw = text.encode("utf-8", "replace")
        if len(raw) > TEXT_SIZE:
            raw = raw[:TEXT_SIZE].decode("utf-8", "ignore").encode("utf-8")
        v, mm = self._view, self._status_mm
        with self._publish_lock:
            s = v.load_u32(SOFF_TEXT_SEQ)
            odd = (s + (2 if s & 1 else 1)) & 0xFFFFFFFF  # odd already: a writer died mid-write
            v.exchange_u32(SOFF_TEXT_SEQ, odd)  # seq_cst: no text store goes before it
            mm[SOFF_TEXT : SOFF_TEXT + TEXT_SIZE] = raw.ljust(TEXT_SIZE, b"\0")
            v.store_u32(SOFF_TEXT_LEN, len(raw))
            v.store_u32(SOFF_TEXT_SEQ, (odd + 1) & 0xFFFFFFFF)

    def _new_metric(self, name: object, kind: int) -> Metric:
        """Slow path of counter()/gauge(): claim the slot (or find it, if an earlier attach of
        this block made it) and remember the Metric for the native lookup."""
        if not isinstance(name, str) or not metric_name_ok(name):
            raise ValueError(
                f"metric name {name!r}: use 1..{METRIC_NAME_SIZE} characters from "
                "[A-Za-z0-9_], not starting with a digit (e.g. 'jobs', 'queue_depth')"
            )
        other = self._poll_metrics.get(name)
        if other is not None and other.kind != kind:
            raise ValueError(
                f"metric {name!r} is a {METRIC_KIND_NAMES[other.kind]}; "
                f"it cannot also be a {METRIC_KIND_NAMES[kind]}"
            )
        want = name.encode("ascii").ljust(METRIC_NAME_SIZE, b"\0")
        v, mm = self._view, self._status_mm
        with self._publish_lock:
            free = -1
            for i in range(METRIC_COUNT):
                off = SOFF_METRICS + i * METRIC_SIZE
                k = mm[SOFF_METRIC_KINDS + i]
                if k == METRIC_FREE:
                    free = i if free < 0 else free
                elif mm[off : off + METRIC_NAME_SIZE] == want:
                    if k != kind:
                        raise ValueError(
                            f"metric {name!r} is a {METRIC_KIND_NAMES.get(k, k)} in this "
                            f"block; it cannot also be a {METRIC_KIND_NAMES[kind]}"
                        )
                    break
            else:
                if free < 0:
                    used = sorted(self._poll_metrics)
                    raise WorkerError(
                        f"metric {name!r}: all {METRIC_COUNT} metric slots of {self.instance}"
                        f" are taken ({', '.join(used)}); reuse one of those names"
                    )
                off = SOFF_METRICS + free * METRIC_SIZE
                mm[off : off + METRIC_NAME_SIZE] = want
                v.store_u64(off + METRIC_NAME_SIZE, 0)
                v.store_u8(SOFF_METRIC_KINDS + free, kind)  # last, release: publishes it
            metric = Metric(v, off + METRIC_NAME_SIZE, kind, name)
            self._poll_add_metric(metric)
        return metric

    def begin_busy(self) -> None:
        self._view.store_u64(SOFF_BUSY_SINCE, time.monotonic_ns())
        if self._state == ST_READY:
            self._set_state(ST_BUSY, wake=False)

    def end_busy(self) -> None:
        self._view.store_u64(SOFF_BUSY_SINCE, 0)
        if self._state == ST_BUSY:
            self._set_state(ST_READY, wake=False)

    def busy(self) -> _Busy:
        """``with worker.busy():`` state BUSY (and busy-since) for the duration of the block."""
        return _Busy(self)

    def wait_for_stop(self, timeout: float | None = None) -> bool:
        """Sleep until a stop is requested (True) or timeout seconds pass (False).

        Wakes at once on a command (futex); Python signal handlers still run promptly.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        v = self._ctl
        while True:
            word = v.load_u32(OFF_CMD)  # load before checking: no lost wake-up
            if self.should_stop:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            v.wait_u32(OFF_CMD, word, left)

    async def wait_for_stop_async(self, timeout: float | None = None) -> bool:
        """asyncio version of wait_for_stop (futex wait in the default executor)."""
        import asyncio  # here, not at the top: it would slow every worker's start-up

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        v = self._ctl
        while True:
            word = v.load_u32(OFF_CMD)
            if self.should_stop:
                return True
            left = ASYNC_SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            await loop.run_in_executor(None, v.wait_u32, OFF_CMD, word, min(left, ASYNC_SLICE_S))

    def close(self, status: int = 0) -> None:
        """Record the exit (status, now, WORKER), publish EXITED and unmap. Idempotent."""
        if self._closed:
            return
        self._closed = True
        v = self._view
        v.store_u64(SOFF_BUSY_SINCE, 0)
        write_exit(v, status, EXIT_SRC_WORKER)
        self._state = ST_EXITED
        self._store_ack(wake=True)
        self._poll_unbind()
        # An executor thread of wait_for_stop_async may still be in its last slice.
        end = time.monotonic() + _CLOSE_WAIT_S
        while self._ctl.waiters and time.monotonic() < end:
            time.sleep(0.005)
        self._unmap()

    def _unmap(self) -> None:
        for view in (self._ctl, self._view):
            if not view.closed:
                view.close()
        self._ctl_mm.close()
        self._status_mm.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(_exit_status(ev))

    def __repr__(self) -> str:
        return f"<Worker {self.instance} {self.name} {self.state_name}>"


def _exit_status(exc: BaseException | None) -> int:
    """The status a `with Worker()` block records for how it was left."""
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    if isinstance(exc, KeyboardInterrupt):
        return -_SIGINT  # Python re-raises SIGINT on an unhandled Ctrl-C
    return 1


def _notify_ready(path: str | None) -> None:
    """Best effort b"READY" datagram to the daemon; never blocks, ignores every error."""
    if not path:
        return
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        s = _socket.socket(
            _socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC
        )
        try:
            s.sendto(b"READY", addr)
        finally:
            s.close()
    except OSError:
        pass


class _Busy:
    """What Worker.busy() returns (contextlib would be one more import for every worker)."""

    __slots__ = ("_worker",)

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def __enter__(self) -> None:
        self._worker.begin_busy()

    def __exit__(self, *exc: object) -> None:
        self._worker.end_busy()
