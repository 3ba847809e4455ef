"""Workers' log files (and cgroup directories), made ahead of their spawn on a helper thread.

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
    worker's user and the cgroup's path (under the daemon's own subtree), and hands back fds.
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

DEPTH = 16     # instances whose files are opened ahead of their spawn

Owner = tuple[int, int] | None      # (uid, gid) a file made for a worker is given; None: ours


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


Job = tuple[tuple[str | None, str | None], str | None, str | None, str | None]


def _open_for(paths: tuple[str | None, str | None], user: str | None, group: str | None,
              cgroup: str | None) -> Opened:
    """On the helper: the instance's cgroup directory (if it has one; whatever goes wrong is
    left for the spawn to find and report), the worker's owner as the spawn will work it out,
    then the files."""
    if cgroup is not None:
        with contextlib.suppress(OSError):
            os.mkdir(cgroup, 0o755)
    owner: Owner = None
    if user is not None:
        creds = credentials(user, group)
        owner = owner_of(creds.uid, creds.gid)
    return open_files(paths, owner)


def _open_batch(jobs: list[Job]) -> list[Opened | None]:
    """On the helper: _open_for of each job, in order; None for one that failed (its spawn
    opens the files itself and reports why). Interrupted: what it opened is closed."""
    got: list[Opened | None] = []
    try:
        for job in jobs:
            try:
                got.append(_open_for(*job))
            except Exception:
                got.append(None)
    except BaseException:
        for opened in got:
            if opened is not None:
                opened.close()
        raise
    return got


class Outputs:
    """The log files of the instances next in the spawn queue, opened on a helper thread.

    They are sent there in batches (one job for up to ``depth`` instances, sent when at most
    half of that many are still ahead): a job per instance cost the loop's thread a Future, a
    queue put and a thread wake-up per spawn, and the two threads handed the GIL back and
    forth for each."""

    def __init__(self, depth: int = DEPTH) -> None:
        self.depth = depth
        self._pool: ThreadPoolExecutor | None = None
        # an instance -> its batch and its place in it
        self._ahead: dict[Instance, tuple[Future[list[Opened | None]], int]] = {}
        self._closed = False

    def ahead(self, queue: Iterable[Instance],
              cgroup_of: Callable[[Instance], str | None] = lambda inst: None) -> None:
        """Start opening the files (and making the cgroup directory, cgroup_of(inst), which
        the spawn then finds made) of the first ``depth`` instances of queue (those not
        started yet), unless more than half of that many are ahead already."""
        if self._closed or len(self._ahead) > self.depth // 2:
            return
        insts: list[Instance] = []
        jobs: list[Job] = []
        for inst in itertools.islice(queue, self.depth):
            if inst in self._ahead:
                continue
            paths = (inst.stdout_path, inst.stderr_path)
            cgroup = cgroup_of(inst)
            if paths == (None, None) and cgroup is None:
                continue
            insts.append(inst)
            jobs.append((paths, inst.cfg.user, inst.cfg.group, cgroup))
        if not jobs:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="outputs")
        batch = self._pool.submit(_open_batch, jobs)
        for i, inst in enumerate(insts):
            self._ahead[inst] = (batch, i)

    def take(self, inst: Instance, paths: tuple[str | None, str | None],
             owner: Owner) -> Opened:
        """inst's output files for its spawn now: the ones opened ahead if they are these
        paths for this owner, else opened here (raising what logs.open_output raises). The
        caller closes them once the child has them."""
        job = self._ahead.pop(inst, None)
        got = None
        with contextlib.suppress(Exception):  # a failure is reported below, by opening here
            got = job[0].result()[job[1]] if job is not None else None
        if got is not None and got.paths == paths:
            return got if got.owner == owner else _for_owner(got, owner)
        if got is not None:        # other paths now (a reload): what was made there stays
            got.close()
        return open_files(paths, owner)

    def discard(self, inst: Instance) -> None:
        """inst will not be spawned now: close whatever was opened for it."""
        job = self._ahead.pop(inst, None)
        if job is not None:
            _close_when_done(*job)

    def close(self) -> None:
        self._closed = True
        for batch, i in self._ahead.values():
            if not batch.cancel():        # cancelled: it never ran, so it opened nothing
                _close_when_done(batch, i)
        self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _close_when_done(batch: Future[list[Opened | None]], i: int) -> None:
    """Close the fds opened for the i-th instance of a batch now or, if it still runs, when
    it finishes (the batch's other instances keep theirs)."""

    def done(f: Future[list[Opened | None]]) -> None:
        if not f.cancelled() and f.exception() is None:
            opened = f.result()[i]
            if opened is not None:
                opened.close()

    batch.add_done_callback(done)
