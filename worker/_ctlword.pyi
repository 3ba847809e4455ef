"""Type stubs for the native module worker._ctlword (see worker/_ctlword.c)."""

from collections.abc import Mapping
from types import TracebackType
from typing import Self

from typing_extensions import Buffer

WAIT_SLICE_NS: int

# The constants of worker/ctlblock.h, named without their PYVISOR_ prefix.
MAGIC: int
VERSION: int
HEADER_SIZE: int
BLOCK_SIZE: int
STATUS_SIZE: int
OFF_MAGIC: int
OFF_VERSION: int
OFF_HEADER_SIZE: int
OFF_BLOCK_SIZE: int
OFF_SLOT: int
OFF_BOOT_ID: int
OFF_CMD: int
OFF_REQUEST_BITS: int
OFF_DEADLINE: int
OFF_SUPERVISOR_PID: int
OFF_EPOCH: int
OFF_INCARNATION: int
OFF_SPAWNED_PID: int
OFF_SPAWNED_UID: int
OFF_SPAWNED_START: int
OFF_SPAWNED_PGID: int
OFF_CONFIG_HASH: int
OFF_STATUS_NAME: int
STATUS_NAME_SIZE: int
SOFF_ACK: int
SOFF_PID: int
SOFF_START_TICKS: int
SOFF_HEARTBEAT: int
SOFF_WORK_DONE: int
SOFF_BUSY_SINCE: int
SOFF_EXIT_SEQ: int
SOFF_EXIT_STATUS: int
SOFF_EXIT_TIME: int
SOFF_EXIT_SOURCE: int
SOFF_TEXT_SEQ: int
SOFF_TEXT_LEN: int
SOFF_TEXT: int
TEXT_SIZE: int
SOFF_METRICS: int
METRIC_COUNT: int
METRIC_SIZE: int
METRIC_NAME_SIZE: int
SOFF_APP: int
SOFF_METRIC_KINDS: int
METRIC_FREE: int
METRIC_COUNTER: int
METRIC_GAUGE: int
CMD_NONE: int
CMD_STOP_GRACEFUL: int
ST_INIT: int
ST_STARTING: int
ST_READY: int
ST_BUSY: int
ST_STOPPING: int
ST_EXITED: int
EXIT_SRC_NONE: int
EXIT_SRC_WORKER: int
ENV_BLOCK: str
ENV_INSTANCE: str
ENV_NOTIFY: str

class View:
    """Atomics and shared futexes at byte offsets of a buffer (held until close())."""

    def __new__(cls, buffer: Buffer) -> Self: ...
    @property
    def closed(self) -> bool: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def waiters(self) -> int: ...
    def load_u32(self, offset: int, /) -> int: ...
    def load_u64(self, offset: int, /) -> int: ...
    def store_u32(self, offset: int, value: int, /) -> None: ...
    def store_u64(self, offset: int, value: int, /) -> None: ...
    def store_u32_seq_cst(self, offset: int, value: int, /) -> None: ...
    def store_u8(self, offset: int, value: int, /) -> None: ...
    def exchange_u32(self, offset: int, value: int, /) -> int: ...
    def fetch_add_u64(self, offset: int, value: int, /) -> int: ...
    def wait_u32(self, offset: int, expected: int, timeout: float | None = None) -> bool: ...
    def wake(self, offset: int, n: int = ...) -> int: ...
    def nop(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

class Metric:
    """A named counter or gauge in a status page (Worker.counter() / Worker.gauge())."""

    def __new__(cls, view: View, offset: int, kind: int, name: str) -> Self: ...
    @property
    def value(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> int: ...
    def inc(self, n: int = 1, /) -> None: ...
    def dec(self, n: int = 1, /) -> None: ...
    def set(self, value: int, /) -> None: ...

class Poller:
    """Base class with a native should_stop poll; subclasses define _on_command."""

    @property
    def should_stop(self) -> bool: ...
    _poll_seq: int
    _poll_stop: bool
    def _poll_bind(self, view: View, offset: int, seq: int, /) -> None: ...
    def _poll_unbind(self) -> None: ...
    def _poll_add_metric(self, metric: Metric, /) -> None: ...
    @property
    def _poll_metrics(self) -> Mapping[str, Metric]: ...
    def counter(self, name: str, /) -> Metric: ...
    def gauge(self, name: str, /) -> Metric: ...
