"""Finding running workers again through their control blocks (daemon crash, kill, re-exec).

A control block is writable by its worker, so nothing in it is trusted on its own. A PID read
from a block is adopted only when ALL of these hold, checked in this order:

1. a pidfd is opened for it first: from then on the PID cannot be recycled under us, so the
   checks below cannot race with PID reuse;
2. its start time (/proc/PID/stat field 22) equals the one the daemon recorded at spawn;
3. the block's boot_id is this boot's (checked when the block is attached);
4. it leads its own process group (we start every worker with setsid);
5. its environment names this very block (PYVISOR_BLOCK, set by the daemon at exec; a forged
   block pointing at PID 1 or at an unrelated process fails here).

A block that fails any check is removed and its PID is never signalled.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from loguru import logger

from worker import block as blk
from worker.block import ENV_BLOCK

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Found:
    """A block left by an earlier daemon: a verified live process, or one that exited."""

    instance: str
    block: blk.ControlBlock
    pid: int | None          # None: the process is gone (or never verified)
    pidfd: int | None
    child: bool              # still our child (after a re-exec)
    ready: bool
    started_at: float        # monotonic seconds
    exit: blk.ExitRecord | None
    incarnation: int


def _environ(pid: int | str) -> list[bytes]:
    """The environment a process was started with ([] if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _environ_names_block(pid: int, name: str) -> bool:
    return f"{ENV_BLOCK}={name}".encode() in _environ(pid)


def _is_child(pid: int) -> bool:
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _started_at(ticks: int) -> float:
    """The monotonic time at which a process started, from its start time in clock ticks."""
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / _CLK_TCK
    return time.monotonic() - max(0.0, since_boot)


def find_by_environ(names: set[str]) -> dict[str, int]:
    """PIDs whose environment names one of these blocks (one pass over /proc)."""
    wanted = {f"{ENV_BLOCK}={n}".encode(): n for n in names}
    found: dict[str, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        for var in _environ(entry.name):
            n = wanted.get(var)
            if n is not None:
                found[n] = int(entry.name)
    return found


def verify(name: str, block: blk.ControlBlock, unrecorded: dict[str, int]) -> tuple[int, int] | str:
    """(pid, pidfd) of the verified process of a block, or why it does not verify."""
    pid, ticks = block.spawned_pid, block.spawned_start_ticks
    if not pid:                           # the daemon died before recording the spawn
        pid, ticks = block.pid, block.start_ticks
    if not pid:                           # ... and the worker had not attached yet
        pid = unrecorded.get(name, 0)
        if not pid:
            return "gone"
        ticks = 0                         # unknown: the environment check below decides
    if pid <= 1 or pid == os.getpid():
        return f"names pid {pid}, which is never a worker"
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    except OSError as e:
        return f"cannot open a pidfd for pid {pid}: {e}"
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
        actual = blk.parse_start_ticks(stat)
        if ticks and actual != ticks:
            why = f"pid {pid} started at tick {actual}, not {ticks} (a recycled pid)"
        elif stat[stat.rindex(")") + 2] == "Z":
            why = "gone"                  # exited; a zombie waiting for init to reap it
        elif os.getpgid(pid) != pid:
            why = f"pid {pid} does not lead its process group"
        elif not _environ_names_block(pid, name):
            why = f"pid {pid} was not started for this block"
        else:
            return pid, pidfd
    except (ProcessLookupError, OSError):
        why = "gone"
    os.close(pidfd)
    return why


def scan(prefix: str) -> list[Found]:
    found: list[Found] = []
    blocks: dict[str, blk.ControlBlock] = {}
    for name in blk.list_blocks(prefix):
        instance = name[len(prefix) + 2:]      # "/" + prefix + "." + instance
        try:
            blocks[name] = blk.ControlBlock.attach(name)
        except blk.BlockError as e:
            logger.warning(f"{instance} removing unusable control block: {e}")
            blk.unlink_name(name)
            continue
        except OSError as e:
            logger.warning(f"{instance} cannot open control block {name}: {e}")
    # blocks whose process was never recorded (the daemon died in the middle of a spawn)
    unrecorded = find_by_environ({n for n, b in blocks.items()
                                  if not b.spawned_pid and not b.pid})
    for name, block in blocks.items():
        instance = name[len(prefix) + 2:]
        result = verify(name, block, unrecorded)
        if isinstance(result, str):
            exit_rec = block.read_exit()
            if result != "gone":
                logger.warning(f"{instance} control block {name} does not verify ({result}); "
                               "removing it without signalling anything")
                block.close()
                block.unlink()
                continue
            found.append(Found(instance, block, None, None, False, False, time.monotonic(),
                               exit_rec, block.incarnation))
            continue
        pid, pidfd = result
        _seq, state = block.ack
        ready = state in (blk.ST_READY, blk.ST_BUSY)
        found.append(Found(instance, block, pid, pidfd, _is_child(pid), ready,
                           _started_at(blk.proc_start_ticks(pid)), None, block.incarnation))
    return found
