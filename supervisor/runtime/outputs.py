"""Workers' log files (and cgroup directories and control blocks), made ahead of their spawn on
a helper thread.

Creating a file costs the kernel far more than opening one: 0.1-0.7 ms of CPU per create on
this VM's ext4, as much as a whole spawn; two per worker on the loop's thread made a mass start
of fresh workers spend as long in file creation as in spawning. So the files of the next few
instances in the spawn queue are opened by one helper thread (``os.open`` releases the GIL,
and so does the spawn while the daemon waits in vfork) while the loop spawns those before
them. Their cgroup directories are made there too (a mkdir in cgroupfs costs ~0.1 ms; the
spawn's own mkdir then finds it made, and an empty one is removed with the others when the
daemon ends); a cgroupfs mkdir and a clone3 into a cgroup both take the kernel's cgroup_mutex,
so this overlaps only with the loop's own work, not with its spawns.

Rules:
  * The helper runs the very same opening code as a spawn on the loop did (logs.open_output:
    the safefs walk, no link followed, the file owned by the worker's uid or refused): no check
    is skipped, only where it runs changes. Nothing else runs there; it gets two paths, the
    worker's user, the cgroup's path (under the daemon's own subtree) and the block's name,
    and hands back fds and the block.
  * At most DEPTH instances are opened ahead (two fds each), so the helper never holds a
    noticeable share of the fd limit.
  * A pair is used only for the paths and the owner the spawn asks for now. Opened for other
    paths (a reload changed them): closed, and the files are opened on the loop (an empty file
    the helper made at the old path stays). For another owner (a reload changed ``user:``, or
    the user's uid changed): a file the helper created is given to the owner on its fd, as if
    created now; one that existed is opened again and checked against the owner. A failure on
    the helper is not reported from there: the spawn opens the files itself and says what is
    wrong, exactly as without the helper.
  * Every fd opened ahead is either handed to a spawn or closed (a cancelled spawn, close()).
  * The control block of an instance that has none is made there too, by the spawner's own
    maker (the same O_EXCL create, squatter check and allocation as on the loop): ~40 us of
    the loop's time per spawn. It is handed over only for the name and the worker's uid and
    gid the spawn works out then; any other is closed and unlinked before the loop makes
    its own, and so is one whose spawn is cancelled (discard and close wait for the batch:
    an unlink may never come after the loop made a block of the same name). A block the
    helper could not make is made by the spawn, which reports why.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from supervisor.logs import open_output_new, output_mode
from supervisor.spawn import credentials

if TYPE_CHECKING:
    from supervisor.runtime.instance import Instance
    from worker.ctlpage import ControlBlock

DEPTH = 16     # instances whose files are opened ahead of their spawn

Owner = tuple[int, int] | None      # (uid, gid) a file made for a worker is given; None: ours
BlockKey = tuple[str, int | None, int | None]   # a block's shm name, the worker's uid and gid
# makes a block: (shm name, slot, the worker's uid, gid) -> the block (spawning.create_block)
MakeBlock = Callable[[str, int, "int | None", "int | None"], "ControlBlock"]


@dataclass(frozen=True, slots=True)
class Opened:
    """The open output files of one spawn (out and err are one fd for one shared file), their
    sizes when opened (for the rotation check) and whether that open created them."""

    paths: tuple[str | None, str | None]
    owner: Owner
    out: int | None
    err: int | None
    sizes: tuple[int | None, int | None]
    created: tuple[bool, bool] = (False, False)

    def fds(self) -> set[int]:
        return {fd for fd in (self.out, self.err) if fd is not None}

    def close(self) -> None:
        for fd in self.fds():
            os.close(fd)


def owner_of(uid: int | None, gid: int | None) -> Owner:
    """Whom a new log file is made for: the worker's user when the daemon is root and
    switches to it (as spawn.spawn does), else the daemon's own euid."""
    return (uid, gid) if uid is not None and gid is not None and os.geteuid() == 0 else None


def open_files(paths: tuple[str | None, str | None], owner: Owner) -> Opened:
    """Open both output files (one fd when they are the same path) by logs.open_output's rules;
    raises what it raises, with nothing left open."""
    out_path, err_path = paths
    out = err = None
    made = [False, False]
    try:
        if out_path:
            out, made[0] = open_output_new(out_path, owner)
        if err_path:
            if err_path == out_path:
                err, made[1] = out, made[0]
            else:
                err, made[1] = open_output_new(err_path, owner)
        sizes = (None if out is None else os.fstat(out).st_size,
                 None if err is None else os.fstat(err).st_size)
    except BaseException:
        for fd in {out, err} - {None}:
            os.close(fd)  # type: ignore[arg-type]
        raise
    return Opened(paths, owner, out, err, sizes, (made[0], made[1]))


def _for_owner(got: Opened, owner: Owner) -> Opened:
    """got (its paths are the ones wanted) for another owner than it was opened for: a file it
    created is given to that owner on its fd, as if created now (the mode never widens); one
    that existed is opened again and checked against that owner. Raises what open_output
    raises, with got closed."""
    fds: list[int | None] = [got.out, got.err]
    try:
        for i, path in enumerate(got.paths):
            fd = fds[i]
            if fd is None or path is None or (i == 1 and got.err == got.out):
                continue
            if got.created[i]:
                os.fchown(fd, *(owner or (os.geteuid(), os.getegid())))
                os.fchmod(fd, output_mode(owner) & stat.S_IMODE(os.fstat(fd).st_mode))
            else:
                fds[i] = None
                os.close(fd)
                fds[i] = open_output_new(path, owner)[0]
    except BaseException:
        for fd in set(fds) - {None}:
            os.close(fd)  # type: ignore[arg-type]
        raise
    err = fds[0] if got.err == got.out else fds[1]
    return Opened(got.paths, owner, fds[0], err, got.sizes, got.created)


# paths, user, group, cgroup directory, block (shm name, slot) or None
Job = tuple[tuple[str | None, str | None], str | None, str | None, str | None,
            tuple[str, int] | None]


class Made:
    """What the helper made for one instance: its files, and its block if it asked for one
    (taken off by the spawn, else closed and unlinked with the files)."""

    __slots__ = ("opened", "block", "key")

    def __init__(self, opened: Opened) -> None:
        self.opened = opened
        self.block: ControlBlock | None = None
        self.key: BlockKey | None = None

    def close(self) -> None:
        self.opened.close()
        drop_block(self)


def drop_block(made: Made) -> None:
    """Close and unlink the block made ahead, if it is still there."""
    block, made.block = made.block, None
    if block is not None:
        block.close()
        block.unlink()


def _open_for(job: Job, make_block: MakeBlock | None) -> Made:
    """On the helper: the instance's cgroup directory (if it has one; whatever goes wrong is
    left for the spawn to find and report), the worker's owner as the spawn will work it out,
    then the files, then the block."""
    paths, user, group, cgroup, block = job
    if cgroup is not None:
        with contextlib.suppress(OSError):
            os.mkdir(cgroup, 0o755)
    owner: Owner = None
    uid = gid = None
    if user is not None:
        creds = credentials(user, group)
        uid, gid = creds.uid, creds.gid
        owner = owner_of(uid, gid)
    made = Made(open_files(paths, owner))
    if block is not None and make_block is not None:
        with contextlib.suppress(Exception):      # the spawn makes it, and says what failed
            made.block = make_block(block[0], block[1], uid, gid)
            made.key = (block[0], uid, gid)
    return made


def _open_batch(jobs: list[Job], make_block: MakeBlock | None) -> list[Made | None]:
    """On the helper: _open_for of each job, in order; None for one that failed (its spawn
    opens the files itself and reports why). Interrupted: what it made is closed."""
    got: list[Made | None] = []
    try:
        for job in jobs:
            try:
                got.append(_open_for(job, make_block))
            except Exception:
                got.append(None)
    except BaseException:
        for made in got:
            if made is not None:
                made.close()
        raise
    return got


class Outputs:
    """The log files of the instances next in the spawn queue, opened on a helper thread.

    They are sent there in batches (one job for up to ``depth`` instances, sent when at most
    half of that many are still ahead): a job per instance cost the loop's thread a Future, a
    queue put and a thread wake-up per spawn, and the two threads handed the GIL back and
    forth for each."""

    def __init__(self, depth: int = DEPTH, make_block: MakeBlock | None = None) -> None:
        self.depth = depth
        self._make_block = make_block
        self._pool: ThreadPoolExecutor | None = None
        # an instance -> its batch and its place in it
        self._ahead: dict[Instance, tuple[Future[list[Made | None]], int]] = {}
        self._closed = False

    def ahead(self, queue: Iterable[Instance],
              cgroup_of: Callable[[Instance], str | None] = lambda inst: None,
              block_of: Callable[[Instance], tuple[str, int] | None] = lambda inst: None
              ) -> None:
        """Start opening the files (and making the cgroup directory, cgroup_of(inst), which
        the spawn then finds made, and the block block_of(inst): its shm name and slot) of
        the first ``depth`` instances of queue (those not started yet), unless more than
        half of that many are ahead already."""
        if self._closed or len(self._ahead) > self.depth // 2:
            return
        insts: list[Instance] = []
        jobs: list[Job] = []
        for inst in itertools.islice(queue, self.depth):
            if inst in self._ahead:
                continue
            paths = (inst.stdout_path, inst.stderr_path)
            cgroup = cgroup_of(inst)
            block = block_of(inst) if self._make_block is not None else None
            if paths == (None, None) and cgroup is None and block is None:
                continue
            insts.append(inst)
            jobs.append((paths, inst.cfg.user, inst.cfg.group, cgroup, block))
        if not jobs:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="outputs")
        batch = self._pool.submit(_open_batch, jobs, self._make_block)
        for i, inst in enumerate(insts):
            self._ahead[inst] = (batch, i)

    def _made(self, inst: Instance) -> Made | None:
        job = self._ahead.get(inst)
        with contextlib.suppress(Exception):  # a failure is reported by the spawn's own try
            return job[0].result()[job[1]] if job is not None else None
        return None

    def take_block(self, inst: Instance, key: BlockKey) -> ControlBlock | None:
        """inst's block made ahead, if it is the one its spawn asks for now (key: the shm
        name, the worker's uid and gid); any other is closed and unlinked here. Before
        ``take``."""
        made = self._made(inst)
        if made is None or made.block is None:
            return None
        if made.key != key:
            drop_block(made)
            return None
        block, made.block = made.block, None
        return block

    def take(self, inst: Instance, paths: tuple[str | None, str | None],
             owner: Owner) -> Opened:
        """inst's output files for its spawn now: the ones opened ahead if they are these
        paths for this owner, else opened here (raising what logs.open_output raises). The
        caller closes them once the child has them."""
        made = self._made(inst)
        self._ahead.pop(inst, None)
        got = None
        if made is not None:
            drop_block(made)            # not taken by take_block: not this spawn's
            got = made.opened
        if got is not None and got.paths == paths:
            return got if got.owner == owner else _for_owner(got, owner)
        if got is not None:        # other paths now (a reload): what was made there stays
            got.close()
        return open_files(paths, owner)

    def discard(self, inst: Instance) -> None:
        """inst will not be spawned now: close (and unlink) whatever was made for it, once
        its batch is done (a block's unlink must come before the loop can make another of
        that name)."""
        made = self._made(inst)
        self._ahead.pop(inst, None)
        if made is not None:
            made.close()

    def close(self) -> None:
        self._closed = True
        running = [job for job in self._ahead.values() if not job[0].cancel()]
        self._ahead.clear()      # (a cancelled batch never ran, so it made nothing)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for batch, i in running:
            with contextlib.suppress(Exception):
                made = batch.result()[i]
                if made is not None:
                    made.close()
