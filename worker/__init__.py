"""pyvisor's worker library: what a supervised process imports.

Depends on posix_ipc and the standard library only -- never on supervisor/, loguru,
pydantic or click (tests/workerlib/test_purity.py checks this).
"""

from worker.api import Worker, WorkerError
from worker.block import (
    CMD_NONE,
    CMD_STOP_GRACEFUL,
    EXIT_SRC_NONE,
    EXIT_SRC_WORKER,
    ST_BUSY,
    ST_EXITED,
    ST_INIT,
    ST_READY,
    ST_STARTING,
    ST_STOPPING,
    BlockError,
    ExitRecord,
    shm_name,
)

__all__ = [
    "CMD_NONE",
    "CMD_STOP_GRACEFUL",
    "EXIT_SRC_NONE",
    "EXIT_SRC_WORKER",
    "ST_BUSY",
    "ST_EXITED",
    "ST_INIT",
    "ST_READY",
    "ST_STARTING",
    "ST_STOPPING",
    "BlockError",
    "ExitRecord",
    "Worker",
    "WorkerError",
    "shm_name",
]
