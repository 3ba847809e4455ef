"""Log files and control blocks made ahead of their spawn on the helper thread
(supervisor/runtime/outputs.py): the spawn gets the very files its paths name, by the same
safefs rules, and the block of its name and user; anything made for other paths, another owner
or another block is never handed over as it is; no fd and no block is ever left behind."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor import safefs
from supervisor.config import WorkerConfig
from supervisor.logs import Rotator
from supervisor.loop import Loop
from supervisor.runtime.instance import Instance
from supervisor.runtime.outputs import Opened, Outputs, open_files
from supervisor.runtime.spawning import create_block
from tests.support.shm import remove_shm, shm_objects
from tests.support.wait import wait_until
from worker.block import OFF_SLOT, shm_name


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def fds_kept() -> Iterator[None]:
    """The test must leave exactly the fds it found (LOG_DIRS' cached directories aside)."""
    safefs.LOG_DIRS.clear()
    before = open_fds()
    yield
    safefs.LOG_DIRS.clear()
    assert open_fds() <= before, f"fds left open: {sorted(open_fds() - before)}"


def instance(tmp_path: Path, i: int, user: str | None = None) -> Instance:
    cfg = WorkerConfig.model_validate({"command": ["/bin/true"], **({"user": user} if user
                                                                     else {})})
    inst = Instance(f"w:{i}", "w", i, cfg, cfg.policy("w"))
    inst.stdout_path = str(tmp_path / f"w-{i}.out.log")
    inst.stderr_path = str(tmp_path / f"w-{i}.err.log")
    return inst


def paths(inst: Instance) -> tuple[str | None, str | None]:
    return inst.stdout_path, inst.stderr_path


def same_file(fd: int | None, path: str | None) -> bool:
    assert fd is not None and path is not None
    a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def test_the_spawn_gets_the_files_opened_ahead(tmp_path: Path, fds_kept: None) -> None:
    out = Outputs(depth=4)
    insts = [instance(tmp_path, i) for i in range(6)]
    try:
        out.ahead(insts)
        got = out.take(insts[0], paths(insts[0]), None)
        try:
            assert got.created == (True, True) and got.sizes == (0, 0)
            assert same_file(got.out, insts[0].stdout_path)
            assert same_file(got.err, insts[0].stderr_path)
            assert got.out is not None and os.get_blocking(got.out), \
                "a worker's stdout must be blocking again"
        finally:
            got.close()
        # only `depth` were opened ahead: the sixth is opened at its spawn
        assert not os.path.exists(insts[5].stdout_path or "")
        for inst in insts[1:]:
            out.take(inst, paths(inst), None).close()
        assert all(os.path.exists(inst.stdout_path or "") for inst in insts)
    finally:
        out.close()


def test_a_shared_file_is_one_fd(tmp_path: Path, fds_kept: None) -> None:
    out = Outputs()
    inst = instance(tmp_path, 0)
    inst.stderr_path = inst.stdout_path
    try:
        out.ahead([inst])
        got = out.take(inst, paths(inst), None)
        assert got.out == got.err and len(got.fds()) == 1
        got.close()
    finally:
        out.close()


def test_files_opened_for_other_paths_are_not_handed_over(tmp_path: Path,
                                                          fds_kept: None) -> None:
    """A reload changed the paths between ahead() and the spawn: the new paths are opened."""
    out = Outputs()
    inst = instance(tmp_path, 0)
    try:
        out.ahead([inst])
        inst.stdout_path = str(tmp_path / "new.out.log")
        got = out.take(inst, paths(inst), None)
        try:
            assert same_file(got.out, inst.stdout_path)
            assert same_file(got.err, inst.stderr_path)
        finally:
            got.close()
    finally:
        out.close()


def test_a_planted_link_is_refused_on_the_helper_as_on_the_loop(tmp_path: Path,
                                                                fds_kept: None) -> None:
    target = tmp_path / "precious"
    target.write_text("root's data\n")
    out = Outputs()
    inst = instance(tmp_path, 0)
    os.symlink(target, inst.stdout_path or "")
    try:
        out.ahead([inst])
        with pytest.raises(safefs.UnsafePathError, match="symbolic link"):
            out.take(inst, paths(inst), None)
        assert target.read_text() == "root's data\n"
    finally:
        out.close()


def test_a_fifo_planted_ahead_never_blocks_the_helper(tmp_path: Path, fds_kept: None) -> None:
    out = Outputs()
    inst = instance(tmp_path, 0)
    os.mkfifo(inst.stderr_path or "")
    try:
        out.ahead([inst])
        with pytest.raises(safefs.UnsafePathError, match="FIFO"):
            out.take(inst, paths(inst), None)
    finally:
        out.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_another_owner_gets_the_files_as_if_made_for_it(tmp_path: Path,
                                                        fds_kept: None) -> None:
    """The owner changed between ahead() and the spawn (a reload changed user:): a file the
    helper created is given to the new owner (mode 0600); an existing file of root's is
    refused for that owner, exactly as it would be without the helper."""
    out = Outputs()
    inst = instance(tmp_path, 0)
    existing = instance(tmp_path, 1)
    Path(existing.stderr_path or "").write_text("root's\n")
    try:
        out.ahead([inst, existing])
        got = out.take(inst, paths(inst), (12345, 12345))
        try:
            for fd in got.fds():
                st = os.fstat(fd)
                assert (st.st_uid, st.st_gid) == (12345, 12345)
                assert stat.S_IMODE(st.st_mode) & 0o077 == 0
        finally:
            got.close()
        with pytest.raises(safefs.UnsafePathError, match="not by the worker's uid 12345"):
            out.take(existing, paths(existing), (12345, 12345))
    finally:
        out.close()


def test_discarded_and_closed_leave_no_fd(tmp_path: Path, fds_kept: None) -> None:
    out = Outputs(depth=8)
    insts = [instance(tmp_path, i) for i in range(8)]
    out.ahead(insts)
    out.discard(insts[0])
    out.discard(insts[1])
    out.take(insts[2], paths(insts[2]), None).close()
    out.close()          # the other five: closed, finished or not (fds_kept checks)


def test_open_files_leaves_nothing_open_when_the_second_fails(tmp_path: Path,
                                                              fds_kept: None) -> None:
    inst = instance(tmp_path, 0)
    os.mkfifo(inst.stderr_path or "")
    with pytest.raises(safefs.UnsafePathError):
        open_files(paths(inst), None)


def test_rotation_watch_with_a_size_checks_only_a_file_over_the_limit(
        tmp_path: Path, fds_kept: None) -> None:
    """A spawn passes the size it found on the fd: within max_bytes only the watch is armed;
    over it, the file is rotated at once as before."""
    loop = Loop()
    rot = Rotator(loop)
    try:
        small, big = tmp_path / "small.log", tmp_path / "big.log"
        small.write_bytes(b"x" * 10)
        big.write_bytes(b"y" * 5000)
        rot.watch(str(small), 1024, 2, size=10)
        rot.watch(str(big), 1024, 2, size=5000)
        assert small.stat().st_size == 10 and not (tmp_path / "small.log.1").exists()
        assert big.stat().st_size == 0 and (tmp_path / "big.log.1").stat().st_size == 5000
    finally:
        rot.close()
        loop.close()


def test_a_file_written_past_the_limit_before_its_watch_is_rotated(
        tmp_path: Path, fds_kept: None) -> None:
    """A worker writes at once: what it wrote between the spawn's open (size 0) and the
    watch made no inotify event, and must not escape rotation for it."""
    loop = Loop()
    rot = Rotator(loop)
    try:
        log = tmp_path / "w.log"
        log.write_bytes(b"z" * 5000)          # written after the open that found it empty
        rot.watch(str(log), 1024, 2, size=0)
        assert log.stat().st_size == 0 and (tmp_path / "w.log.1").stat().st_size == 5000
    finally:
        rot.close()
        loop.close()


def test_an_instance_without_files_is_not_sent_to_the_helper(tmp_path: Path,
                                                             fds_kept: None) -> None:
    out = Outputs()
    inst = instance(tmp_path, 0)
    inst.stdout_path = inst.stderr_path = None
    try:
        out.ahead([inst])
        assert out.take(inst, (None, None), None) == Opened((None, None), None, None, None,
                                                            (None, None))
    finally:
        out.close()


def test_the_helper_gets_a_batch_when_half_of_depth_is_left(tmp_path: Path,
                                                            fds_kept: None) -> None:
    """One job per batch: nothing more is sent while more than depth/2 are ahead, then the
    next ones up to depth; never more than depth instances are ahead."""
    out = Outputs(depth=4)
    insts = [instance(tmp_path, i) for i in range(8)]
    try:
        out.ahead(insts)                    # 0-3 ahead
        out.take(insts[0], paths(insts[0]), None).close()
        out.ahead(insts[1:])                # 3 ahead > 2: nothing sent
        out.take(insts[1], paths(insts[1]), None).close()
        assert not os.path.exists(insts[4].stdout_path or "")
        out.ahead(insts[2:])                # 2 ahead: 4 and 5 sent
        wait_until(lambda: os.path.exists(insts[5].stderr_path or ""), 10,
                   "the helper to make the files of the second batch")
        for inst in insts[2:6]:
            out.take(inst, paths(inst), None).close()
        assert not os.path.exists(insts[6].stdout_path or "")
    finally:
        out.close()


def test_a_discarded_instance_leaves_its_batch_neighbours_their_files(
        tmp_path: Path, fds_kept: None) -> None:
    """Discarding one instance of a batch closes its fds only: the others are handed over
    open, the very files at their paths."""
    out = Outputs(depth=4)
    insts = [instance(tmp_path, i) for i in range(4)]
    try:
        out.ahead(insts)
        out.discard(insts[1])
        for inst in (insts[0], insts[2], insts[3]):
            got = out.take(inst, paths(inst), None)
            try:
                assert got.created == (True, True)
                assert same_file(got.out, inst.stdout_path)
                assert same_file(got.err, inst.stderr_path)
            finally:
                got.close()
    finally:
        out.close()


def inotify_watches(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return sum(line.startswith("inotify wd:") for line in f)


def test_a_file_no_longer_watched_leaves_no_inotify_watch_behind(
        tmp_path: Path, fds_kept: None) -> None:
    """Unwatching (a worker removed by a reload, an instance gone) removes the kernel's
    watch too: a daemon that reloads for months must not pile up watches on files it no
    longer rotates (fs.inotify.max_user_watches is per user, shared with the workers)."""
    loop = Loop()
    rot = Rotator(loop)
    try:
        logs = [tmp_path / f"w{i}.log" for i in range(3)]
        for log in logs:
            log.write_bytes(b"x")
            rot.watch(str(log), 1024, 2, size=1)
        rot.watch(str(logs[0]), 1024, 2, size=1)      # a second user of the same file
        assert inotify_watches(rot._fd) == 3
        rot.unwatch(str(logs[0]))
        assert inotify_watches(rot._fd) == 3          # its other user still needs it
        rot.unwatch(str(logs[0]))
        rot.unwatch(str(logs[1]))
        assert inotify_watches(rot._fd) == 1
        rot.unwatch(str(logs[1]))                     # once more: nothing left to remove
        assert inotify_watches(rot._fd) == 1
    finally:
        rot.close()
        loop.close()


# -- control blocks made ahead ----------------------------------------------------------------
@pytest.fixture
def prefix() -> Iterator[str]:
    p = "t" + uuid.uuid4().hex[:8]
    try:
        yield p
    finally:
        remove_shm(p + ".")


def with_blocks(prefix: str, depth: int = 4) -> Outputs:
    return Outputs(depth=depth, make_block=lambda name, slot, uid, gid: create_block(
        name, slot, 7, uid, gid))


def block_of(prefix: str) -> Callable[[Instance], tuple[str, int] | None]:
    return lambda inst: (shm_name(prefix, inst.name), inst.index)


def test_a_block_made_ahead_is_handed_to_its_spawn(tmp_path: Path, prefix: str,
                                                   fds_kept: None) -> None:
    out = with_blocks(prefix)
    insts = [instance(tmp_path, i) for i in range(2)]
    try:
        out.ahead(insts, block_of=block_of(prefix))
        name = shm_name(prefix, insts[1].name)
        block = out.take_block(insts[1], (name, None, None))
        assert block is not None and block.name == name and block.intact()
        assert block.view.load_u32(OFF_SLOT) == 1, "the block carries its instance's slot"
        out.take(insts[1], paths(insts[1]), None).close()
        block.close()
        block.unlink()
    finally:
        out.close()
    # the other one's block was never taken: closed and unlinked with its files
    assert shm_objects(prefix + ".") == []


def test_a_block_for_another_name_or_user_is_unlinked_not_handed_over(
        tmp_path: Path, prefix: str, fds_kept: None) -> None:
    """The prefix or the worker's user changed between ahead() and the spawn (a reload):
    the block made ahead is removed before the spawn makes the one it asks for."""
    out = with_blocks(prefix)
    insts = [instance(tmp_path, i) for i in range(2)]
    try:
        out.ahead(insts, block_of=block_of(prefix))
        name0, name1 = (shm_name(prefix, i.name) for i in insts)
        assert out.take_block(insts[0], (name0, 12345, 12345)) is None
        assert out.take_block(insts[1], (name1 + "x", None, None)) is None
        assert shm_objects(prefix + ".") == [], "both blocks made ahead are gone"
        for inst in insts:
            out.take(inst, paths(inst), None).close()
    finally:
        out.close()


def test_a_discarded_spawn_leaves_no_block(tmp_path: Path, prefix: str,
                                           fds_kept: None) -> None:
    out = with_blocks(prefix)
    insts = [instance(tmp_path, i) for i in range(3)]
    try:
        out.ahead(insts, block_of=block_of(prefix))
        out.discard(insts[0])
        # unlinked at once, so the loop may make a block of that name right away
        assert not any(n.startswith(f"{prefix}.w:0") for n in shm_objects(prefix + "."))
        again = create_block(shm_name(prefix, insts[0].name), 0, 7, None, None)
        again.close()
        again.unlink()
    finally:
        out.close()
    assert shm_objects(prefix + ".") == []


def test_a_squatted_block_name_is_taken_back_by_moving_it_aside(tmp_path: Path, prefix: str,
                                                                 fds_kept: None) -> None:
    """Something planted under the block's name that no unlink removes (a directory with an
    entry in it): it is moved to a hidden name and the block is made (no local user can keep
    a worker from starting that way)."""
    out = with_blocks(prefix)
    inst = instance(tmp_path, 0)
    name = shm_name(prefix, inst.name)
    planted = Path("/dev/shm") / name[1:]
    planted.mkdir()
    (planted / "x").write_text("")
    aside: list[Path] = []
    try:
        out.ahead([inst], block_of=block_of(prefix))
        block = out.take_block(inst, (name, None, None))
        assert block is not None and planted.is_file()
        aside = list(Path("/dev/shm").glob(f".squatted.{name[1:]}.*"))
        assert len(aside) == 1 and (aside[0] / "x").exists(), aside
        block.close()
        block.unlink()
        out.take(inst, paths(inst), None).close()
    finally:
        out.close()
        for d in aside + [planted]:
            if d.is_dir():
                (d / "x").unlink()
                d.rmdir()
