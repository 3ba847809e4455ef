"""What supervisorctl can tell while no supervisord runs: which workers of the config are
still alive (read from their control blocks), and where their log files are.

This is the slow path (the daemon is down), so it may load the config (pydantic, ~0.1 s);
the fast path never imports this module. Blocks are read-only here, and trusted no more
than adoption trusts them (supervisor/adopt.py): only ctl-page names of the config's prefix,
opened O_RDONLY|O_NOFOLLOW|O_NONBLOCK and checked on the fd (a regular file, owned by our
euid, exactly BLOCK_SIZE bytes, in a mode we create), the header checked (magic, layout,
this boot), and a recorded pid counted alive only when its start time, real uid and process
group are the ones recorded at spawn. Nothing is written, unlinked or signalled.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from worker import block as blk
from worker.ctlpage import CTL_MODE, CTL_MODE_GROUP

SHOWN = 10       # live workers named, at most


@dataclass(frozen=True)
class Alive:
    instance: str
    pid: int


def _read_ctl_page(name: str) -> bytes | None:
    try:
        fd = os.open(blk.SHM_DIR + name,             # name: "/prefix.w:0"
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_size != blk.BLOCK_SIZE
                or stat.S_IMODE(st.st_mode) not in (CTL_MODE, CTL_MODE_GROUP)):
            return None
        return os.pread(fd, blk.BLOCK_SIZE, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


def _u(buf: bytes, off: int, width: int) -> int:
    return int.from_bytes(buf[off:off + width], "little")


def _matches(pid: int, ticks: int, uid: int, pgid: int) -> bool:
    """The recorded process is alive: same start time, real uid and process group."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            line = f.read(4096)
        if line[line.rindex(")") + 2] == "Z" or blk.parse_start_ticks(line) != ticks:
            return False
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            real = next((int(x.split()[1]) for x in f.read(16384).splitlines()
                         if x.startswith("Uid:")), -1)
        return real == uid and os.getpgid(pid) == pgid
    except (OSError, ValueError, IndexError):
        return False


def alive(prefix: str) -> list[Alive]:
    """The verified live workers of the block prefix (by instance name)."""
    found = []
    for name in blk.list_blocks(prefix):
        page = _read_ctl_page(name)
        if page is None:
            continue
        try:
            blk.check_header(name, page[:blk.HEADER_SIZE])
        except blk.BlockError:
            continue
        pid = _u(page, blk.OFF_SPAWNED_PID, 4)
        if not 1 < pid <= blk.PID_MAX:
            continue
        if _matches(pid, _u(page, blk.OFF_SPAWNED_START, 8), _u(page, blk.OFF_SPAWNED_UID, 4),
                    _u(page, blk.OFF_SPAWNED_PGID, 4)):
            found.append(Alive(name[len(prefix) + 2:], pid))
    return found


def describe_alive(config_path: str) -> str | None:
    """'2 workers are still alive and will be adopted when it starts: web:0 (pid 12), ...',
    or None when none are (or the config cannot be read: the daemon will say why)."""
    from supervisor.config import ConfigError, load_config
    try:
        config = load_config(config_path)
    except ConfigError:
        return None
    found = alive(config.supervisor.block_prefix)
    if not found:
        return None
    shown = ", ".join(f"{a.instance} (pid {a.pid})" for a in found[:SHOWN])
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    verb = "worker is" if len(found) == 1 else "workers are"
    return (f"{len(found)} {verb} still alive and will be adopted when it starts: "
            f"{shown}{more}")


def log_paths(config_path: str, instance: str) -> tuple[str | None, str | None] | str:
    """The log files of instance from the config (stdout, stderr), or why there are none."""
    from supervisor.config import ConfigError, load_config
    from supervisor.names import split_instance_name
    try:
        config = load_config(config_path)
    except ConfigError as e:
        return str(e).splitlines()[0]
    worker, index = split_instance_name(instance)
    cfg = config.workers.get(worker)
    if cfg is None or index is None or not 0 <= index < cfg.numprocs:
        return f"{config_path} has no instance {instance}"
    return cfg.log_paths(worker, index)
