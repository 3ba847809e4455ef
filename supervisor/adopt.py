"""Finding running workers again through their control blocks (daemon crash, kill, re-exec).

Anyone can create names in /dev/shm, and a worker owns its status page, so the scan trusts
nothing it did not write itself:

* Only ctl-page names of our prefix are looked at ("<prefix>.name:index"). Each is opened with
  O_NOFOLLOW|O_NONBLOCK and checked ON THE FD: a regular file, owned by our euid, exactly
  BLOCK_SIZE bytes, in the mode we create it with. Anything else (a directory, FIFO, symlink,
  someone else's file) is logged once and skipped: never read, never unlinked, never a crash.
* Identity comes ONLY from the ctl page (which only we can write). A recorded PID is adopted
  when ALL of these hold, checked in this order:
  1. a pidfd is opened for it first: it pins the process (never another one with its number
     later), not the number, and /proc is read by number: what /proc says is believed only
     when the process is alive after the reads (or, with the ioctl, not reaped before it);
  2. its start time (/proc/PID/stat field 22) equals the one recorded at spawn;
  3. the block's boot_id is this boot's (checked with the header);
  4. its real uid is the one recorded at spawn (from the pidfd, supervisor.pidinfo, or
     /proc/PID/status), or, with cgroups, the instance's cgroup holds it (a root worker that
     dropped its own privileges);
  5. its process group is the one recorded at spawn (we start every worker with setsid).
  Start time, state, process group and parent come from ONE read of /proc/PID/stat; with
  cgroups, the instance's cgroup must hold it (its cgroup id from the pidfd, or without the
  ioctl /proc/PID/cgroup read while the pidfd pins it; see reconcile).
  The environment is not consulted for a recorded PID (nginx, redis and setproctitle programs
  overwrite it); only a block whose PID was never recorded (the daemon died mid-spawn) is
  matched by searching /proc/*/environ for the block's name.
* Nothing in the status page can make the daemon adopt, signal, orphan or duplicate a process:
  a worker that deleted or scribbled over it is still adopted by its ctl page, and the daemon
  then does without its heartbeat and ready data.

A block that fails a check is removed (both pages) and its PID is never signalled.
"""

from __future__ import annotations

import os
import select
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from supervisor import pidinfo
from worker import block as blk
from worker.block import ENV_BLOCK
from worker.ctlpage import CTL_MODE, CTL_MODE_GROUP, ControlBlock

_CLK_TCK = os.sysconf("SC_CLK_TCK")
# A block whose spawn was never recorded and that no process names: the spawn never happened
# (the blocks of the next few spawns are made ahead of them, runtime/outputs.py), or its
# process was gone before it was recorded (or overwrote its environment: see reconcile)
NEVER_RAN = "never spawned"
MAX_SCAN_WARNINGS = 20  # names logged one by one at a scan; the rest are counted


@dataclass
class Found:
    """A block left by an earlier daemon: a verified live process, or one that exited."""

    instance: str
    block: ControlBlock
    pid: int | None          # None: the process is gone (or never verified)
    pidfd: int | None
    child: bool              # still our child (after a re-exec)
    ready: bool
    started_at: float        # monotonic seconds
    exit: blk.ExitRecord | None
    incarnation: int
    unverifiable: str = ""   # why its live process could not be verified (never duplicated)
    attached: bool = False   # the worker published its pid in its status page
    # the ctl page's command word, stop deadline and config hash (read in the same check of
    # the page as the identity: only the daemon writes them)
    cmd: int = 0
    deadline_ns: int = 0
    config_hash: int = 0
    cgroup_id: int | None = None   # the cgroup its process is in (pidinfo), None: not known
    cgroup_path: str | None = None  # or as /proc/PID/cgroup said it, read with the pidfd held
    never_ran: bool = False  # no spawn recorded and no process names it (see NEVER_RAN)

@dataclass(frozen=True, slots=True)
class _Proc:
    """What one read of /proc/PID/stat says about a process (fields 3, 4, 5 and 22)."""

    state: str
    ppid: int
    pgrp: int
    start_ticks: int


def _proc_stat(pid: int) -> _Proc:
    """Every field adoption needs from /proc/PID/stat, in one read. Field 2 (comm) may hold
    spaces and parentheses, so the fields are split after the LAST ')'."""
    line = _read_proc(pid, "stat").decode("utf-8", "replace")
    rest = line[line.rindex(")") + 2:].split()
    return _Proc(rest[0], int(rest[1]), int(rest[2]), int(rest[22 - 3]))


def _leads_its_group(pid: int) -> bool:
    try:
        return _proc_stat(pid).pgrp == pid
    except (OSError, ValueError, IndexError):
        return False


def _environ(pid: int | str) -> list[bytes]:
    """The environment a process was started with ([] if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read(1 << 20).split(b"\0")
    except OSError:
        return []


def _started_at(ticks: int) -> float:
    """The monotonic time at which a process started, from its start time in clock ticks."""
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / _CLK_TCK
    return time.monotonic() - max(0.0, since_boot)


def find_by_environ(names: set[str]) -> dict[str, list[int]]:
    """PIDs whose environment names one of these blocks (one pass over /proc). Anyone can put
    any variable in their environment: these are candidates, never proof."""
    wanted = {f"{ENV_BLOCK}={n}".encode(): n for n in names}
    found: dict[str, list[int]] = {}
    if not wanted:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        for var in _environ(entry.name):
            n = wanted.get(var)
            if n is not None:
                found.setdefault(n, []).append(int(entry.name))
    return found


def verify(name: str, block: ControlBlock, unrecorded: dict[str, list[int]],
           member: Callable[[str, int], bool | None], cgroup_dir: str | None = None
           ) -> tuple[int, int, _Proc, int | str | None] | str:
    """(pid, pidfd, its /proc stat, its cgroup: id, or path as /proc/PID/cgroup has it, or
    None) of the verified process of a block, or why it does not verify.
    ``member(instance, pid)``: whether pid is in the instance's cgroup (None: no cgroups);
    ``cgroup_dir``: the daemon's own (see pidinfo). Per block: a pidfd, one read of
    /proc/PID/stat (start time, state, process group, parent) and one ioctl on the pidfd
    (real uid, cgroup; /proc/PID/status and /proc/PID/cgroup where the kernel has none)."""
    pid, ticks = block.spawned_pid, block.spawned_start_ticks
    uid, pgid = block.spawned_uid, block.spawned_pgid
    recorded = pid != 0
    if not recorded:                      # the daemon died before recording the spawn
        candidates = unrecorded.get(name, [])
        if not candidates:
            return NEVER_RAN
        # Only the environment names these, and anyone can set it: adopted only when the
        # instance's cgroup (which nobody else can join) holds exactly that one; otherwise it
        # cannot be told, and is neither adopted nor signalled nor started twice. With
        # cgroups, none in it: none is ours (a local user's processes naming the blocks of a
        # crashed daemon made their instances FATAL); reconcile still looks at the cgroup.
        instance = name.split(".", 1)[1] if "." in name else name
        held = [member(instance, p) for p in candidates]
        inside = [p for p, m in zip(candidates, held, strict=True) if m]
        if not inside and all(m is False for m in held):
            return NEVER_RAN
        if len(inside) > 1:
            # its leader and the leader's children (a shell's commands inherit the variable):
            # the leader is the one the spawn made a session leader (its pid is its group)
            inside = [p for p in inside if _leads_its_group(p)] or inside
        if len(inside) != 1 or (len(candidates) != 1 and None in held):
            return (f"unverifiable: the spawn was never recorded and {len(candidates)} "
                    f"process(es) name this block in their environment "
                    f"({len(inside)} in its cgroup)")
        pid = inside[0]
        ticks, uid, pgid = 0, -1, pid     # unknown: the cgroup and the environment decide
    if not 1 < pid <= blk.PID_MAX or pid == os.getpid():
        return f"names pid {pid}, which is never a worker"
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    except OSError as e:
        return f"unverifiable: cannot open a pidfd for pid {pid}: {e}"
    try:
        proc = _proc_stat(pid)
        info = pidinfo.ids(pidfd, cgroup_dir) if recorded else None
        if info is None:
            # /proc is read by number, and a pidfd pins the process, not its number: what the
            # reads say is about our process only if it is still alive after them (with the
            # ioctl, done after the stat read, an answer means it was not reaped before)
            owner = _real_uid(pid) if uid >= 0 else -1
            where = _cgroup_path(pid) if recorded and cgroup_dir else None
            named = recorded or f"{ENV_BLOCK}={name}".encode() in _environ(pid)
            stale = _has_exited(pidfd)
        else:
            owner, where, named, stale = info[0], None, True, False
        if stale:
            why = "gone"                  # exited meanwhile: the reads may be of another
        elif recorded and proc.start_ticks != ticks:
            why = f"pid {pid} started at tick {proc.start_ticks}, not {ticks} (a recycled pid)"
        elif proc.state == "Z":
            why = "gone"                  # exited; a zombie waiting for init to reap it
        elif not named:
            why = "gone"
        elif uid >= 0 and owner != uid and not _dropped_in_its_cgroup(name, pid, pidfd, member):
            # the recorded pid and start time, yet not the recorded uid or process group: it
            # may be ours (a program that setuid()s itself: memcached -u, dnsmasq) or not --
            # without the instance's cgroup holding it, it cannot be told, so it is neither
            # adopted nor signalled nor started a second time
            why = f"unverifiable: pid {pid} runs as uid {owner}, not {uid}"
        elif proc.pgrp != pgid:
            why = f"unverifiable: pid {pid} is not in process group {pgid}"
        else:
            return pid, pidfd, proc, info[1] if info is not None else where
    except (ProcessLookupError, FileNotFoundError):
        why = "gone"
    except (OSError, ValueError, IndexError) as e:
        why = f"unverifiable: cannot inspect pid {pid}: {e}"
    os.close(pidfd)
    return why


def _dropped_in_its_cgroup(name: str, pid: int, pidfd: int,
                           member: Callable[[str, int], bool | None]) -> bool:
    """A leader with the recorded pid and start time but another uid is ours when the
    instance's cgroup holds it: nobody but root and the daemon can put a process there, so it
    is the program we spawned, which changed its own uid (a root worker that drops its
    privileges). Read by number, believed only if it is still alive after the read."""
    return member(name.partition(".")[2], pid) is True and not _has_exited(pidfd)


def _cgroup_path(pid: int) -> str | None:
    """The cgroup2 path of a process as /proc/PID/cgroup has it (None: it has none)."""
    for line in _read_proc(pid, "cgroup").decode("utf-8", "replace").splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _has_exited(pidfd: int) -> bool:
    """Whether the process of pidfd has exited (its pidfd is readable then). poll, not
    select: select() refuses an fd of 1024 or more, and adoption holds one pidfd per live
    instance, so past ~1,000 each check raised ('filedescriptor out of range in select()')
    and the instance was FATAL, unverifiable, its live process left unmanaged (every block
    without PIDFD_GET_INFO, kernels before 6.13; here, a spawn never recorded)."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(0))


def _real_uid(pid: int) -> int:
    """The real uid of a process (/proc/PID/status; the owner of /proc/PID would be root for a
    process that made itself non-dumpable)."""
    text = _read_proc(pid, "status", 16384)
    at = text.find(b"\nUid:")
    if at < 0:
        raise ValueError(f"no Uid line in /proc/{pid}/status")
    return int(text[at + 5:].split(b"\n", 1)[0].split()[0])    # real, effective, ...


def _read_proc(pid: int, name: str, size: int = 4096) -> bytes:
    """The first size bytes of /proc/PID/name (one open, one read: 10,000 of them at start)."""
    fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _owner_of(path: str) -> str:
    try:
        return f"uid {os.lstat(path).st_uid}"
    except OSError:
        return "an unknown owner"


def open_block(name: str, warn: Callable[[str], None] = logger.warning) -> ControlBlock | None:
    """Open a ctl page an earlier daemon of ours left, or None (told to ``warn``) if the name
    holds anything else. Never raises; never unlinks what is not ours."""
    instance = name.partition(".")[2]
    path = blk.SHM_DIR + name
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        warn(f"{instance} ignoring {path} (owned by {_owner_of(path)}): "
                       f"not a control block ({e.strerror})")
        return None
    try:
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif st.st_uid != os.geteuid():
            problem = "not ours"
        elif st.st_size != blk.BLOCK_SIZE:
            problem = f"{st.st_size} bytes, not {blk.BLOCK_SIZE}"
        elif stat.S_IMODE(st.st_mode) not in (CTL_MODE, CTL_MODE_GROUP):
            problem = f"mode {stat.S_IMODE(st.st_mode):04o}"
        if problem is not None:
            warn(f"{instance} ignoring {path} (owned by uid {st.st_uid}): "
                           f"not a control block of ours ({problem})")
            os.close(fd)
            return None
        return ControlBlock.open_existing(name, fd, st)
    except blk.BlockError as e:
        warn(f"{instance} removing unusable control block: {e}")
        os.close(fd)
        blk.unlink_name(name)
    except (OSError, ValueError) as e:
        warn(f"{instance} cannot open control block {name}: {e}")
        os.close(fd)
    return None


class _Warnings:
    """Any local user can plant a million names under our prefix in /dev/shm: the first
    MAX_SCAN_WARNINGS are logged one by one, the rest in one line (a line per name was a log
    flood, and most of the scan's time, that the planter chose)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.logged = 0
        self.more = 0

    def __call__(self, message: str) -> None:
        if self.logged < MAX_SCAN_WARNINGS:
            self.logged += 1
            logger.warning(message)
        else:
            self.more += 1

    def summary(self) -> None:
        if self.more:
            logger.warning(f"ignoring {self.more:,} more names of the same kinds under "
                           f"{blk.SHM_DIR}/{self.prefix}.* (see them: ls -l "
                           f"{blk.SHM_DIR}/{self.prefix}.*)")


def scan(prefix: str, member: Callable[[str, int], bool | None] = lambda _i, _p: None,
         cgroup_dir: str | None = None) -> list[Found]:
    found: list[Found] = []
    blocks: dict[str, ControlBlock] = {}
    try:
        entries = os.listdir(blk.SHM_DIR)    # once: for the ctl pages and the sweep below
    except OSError:
        entries = []
    warn = _Warnings(prefix)
    for name in blk.list_blocks(prefix, entries):
        b = open_block(name, warn)
        if b is not None:
            blocks[name] = b
    warn.summary()
    unrecorded: list[str] = []
    for name, block in blocks.items():
        # one open of the status page, one check of the ctl page, for every read below
        with block.reading():
            if block.spawned_pid:
                _check(found, prefix, name, block, {}, member, cgroup_dir)
            else:
                unrecorded.append(name)
    if unrecorded:      # the daemon died in the middle of these spawns: one pass over /proc
        candidates = find_by_environ(set(unrecorded))
        for name in unrecorded:
            with blocks[name].reading():
                _check(found, prefix, name, blocks[name], candidates, member, cgroup_dir)
    _sweep_orphan_status_pages(prefix, blocks, set(entries))
    return found


def _check(found: list[Found], prefix: str, name: str, block: ControlBlock,
           unrecorded: dict[str, list[int]], member: Callable[[str, int], bool | None],
           cgroup_dir: str | None) -> None:
    """Verify one block (inside its reading()) and add what it says to found."""
    instance = name[len(prefix) + 2:]      # "/" + prefix + "." + instance
    result = verify(name, block, unrecorded, member, cgroup_dir)
    if isinstance(result, str):
        _not_verified(found, instance, name, block, result)
        return
    pid, pidfd, proc, cgroup = result
    if not block.has_status:
        logger.warning(f"{instance} status page {block.status_name} is gone; adopting pid "
                       f"{pid} without its heartbeat and ready reports")
    _seq, state = block.ack
    _cseq, cmd = block.cmd
    found.append(Found(instance, block, pid, pidfd, proc.ppid == os.getpid(),
                       state in (blk.ST_READY, blk.ST_BUSY), _started_at(proc.start_ticks),
                       None, block.incarnation, attached=block.attached, cmd=cmd,
                       deadline_ns=block.deadline_ns, config_hash=block.config_hash,
                       cgroup_id=cgroup if isinstance(cgroup, int) else None,
                       cgroup_path=cgroup if isinstance(cgroup, str) else None))


def _not_verified(found: list[Found], instance: str, name: str, block: ControlBlock,
                  why: str) -> None:
    """A block whose process did not verify: kept as unverifiable (it may be alive), recorded
    as exited while away (gone), or removed without signalling anything."""
    if why.startswith("unverifiable"):
        # it may be alive: never a duplicate; the block stays for a later look
        logger.error(f"{instance} control block {name}: {why}; not adopted and not "
                     "started again")
        found.append(Found(instance, block, None, None, False, False, time.monotonic(),
                           None, block.incarnation, why.split(": ", 1)[1]))
        return
    if why == NEVER_RAN:      # reconcile decides: no exit to report unless its cgroup is busy
        found.append(Found(instance, block, None, None, False, False, time.monotonic(),
                           None, block.incarnation, never_ran=True))
        return
    if why != "gone":
        logger.warning(f"{instance} control block {name} does not verify ({why}); "
                       "removing it without signalling anything")
        block.close()
        block.unlink()
        return
    found.append(Found(instance, block, None, None, False, False, time.monotonic(),
                       block.read_exit(), block.incarnation))


def _sweep_orphan_status_pages(prefix: str, blocks: dict[str, ControlBlock],
                               entries: set[str]) -> None:
    """Remove status pages that no ctl page names: a daemon killed between creating an
    instance's two pages leaves one. Only ours (owned by our uid, a regular file) and only
    when its ctl page is gone or names another status page: a live worker's page is never
    touched. ``entries``: /dev/shm as listed at the start of the scan (a page made since is
    a new daemon's own)."""
    for e in entries:
        if e.startswith(f".{prefix}.") and _hidden_page(e):
            _remove_ours(e, "a control page made to be renamed over a squatted name")
            continue
        if not e.startswith(prefix + "."):
            continue
        ctl = "/" + e.rsplit(".", 1)[0]
        owner = blocks.get(ctl)
        if owner is not None and owner.status_name == "/" + e and ctl[1:] in entries:
            continue                     # a block's own page (the common case, checked first)
        if not blk.status_name_ok(ctl, "/" + e):
            continue
        if owner is None and ctl[1:] in entries and os.path.lexists(blk.SHM_DIR + ctl):
            # its ctl page is there, unread (not ours); looked at again: open_block removed
            # an unusable one (a daemon killed inside create) after the listing was made
            continue
        _remove_ours(e, "a status page no control block names")


def _hidden_page(entry: str) -> bool:
    """Whether entry is named as runtime.spawning.create_block names a ctl page it makes to
    rename over a squatted name: ".<prefix>.<instance>.<16 hex digits>.new". A daemon killed
    between the two steps leaves it."""
    stem, dot, new = entry.rpartition(".")
    token = stem.rpartition(".")[2]
    return bool(dot) and new == "new" and len(token) == 16 and all(
        c in "0123456789abcdef" for c in token)


def _remove_ours(entry: str, what: str) -> None:
    """Unlink /dev/shm/entry if it is a regular file of ours (never another user's)."""
    try:
        st = os.stat(os.path.join(blk.SHM_DIR, entry), follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
        logger.info(f"removing /dev/shm/{entry}: {what}")
        blk.unlink_name("/" + entry)

