"""supervisor._readfiles.read_files and the status reads built on it (runtime.procstats), on
real files: /proc, a tmp dir with hostile entries (a symlink, '..', a FIFO, a huge file, a
directory), and the parsers fed text a process can shape (its own comm)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor._readfiles import MAX_LIMIT, read_files
from supervisor.runtime import procstats


@pytest.fixture
def dirfd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def test_reads_each_file_once_bounded(tmp_path: Path, dirfd: int) -> None:
    (tmp_path / "a").write_bytes(b"one\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"")
    (tmp_path / "huge").write_bytes(b"x" * (3 * MAX_LIMIT))
    got = read_files(dirfd, ["a", b"sub/b", "huge", "missing"], 100)
    assert got == [b"one\n", b"", b"x" * 100, errno.ENOENT]
    assert read_files(dirfd, ["huge"], MAX_LIMIT) == [b"x" * MAX_LIMIT]


def test_never_leaves_the_dir_nor_follows_a_symlink(tmp_path: Path, dirfd: int) -> None:
    (tmp_path / "sub").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"secret")
    try:
        (tmp_path / "link").symlink_to(outside)
        (tmp_path / "dirlink").symlink_to(tmp_path / "sub")
        (tmp_path / "sub" / "f").write_bytes(b"ok")
        names = ["link", "dirlink/f", "../" + outside.name, "sub/../../" + outside.name,
                 str(outside), "..", "", "a\0b", "x" * 5000]
        got = read_files(dirfd, names, 64)
        assert b"secret" not in got
        assert all(isinstance(r, int) for r in got), got
        assert got[2:] == [errno.EINVAL] * 7
        (tmp_path / "..x").write_bytes(b"dots")       # a name that starts with '..' is fine
        assert read_files(dirfd, ["sub/f", "sub/./f", "..x"], 64) == [b"ok", b"ok", b"dots"]
    finally:
        outside.unlink()


def test_fifo_and_directory_do_not_block(tmp_path: Path, dirfd: int) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "d").mkdir()
    got = read_files(dirfd, ["fifo", "d"], 64)   # returns at once: no writer is waited for
    assert got[0] in (b"", errno.EAGAIN) and got[1] == errno.EISDIR


def test_bad_arguments_raise_not_crash(dirfd: int) -> None:
    for limit in (0, -1, MAX_LIMIT + 1):
        with pytest.raises(ValueError):
            read_files(dirfd, ["a"], limit)
    with pytest.raises(TypeError):
        read_files(dirfd, [1], 64)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        read_files(dirfd, None, 64)  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):
        read_files(dirfd, ["\udcff"], 64)
    assert read_files(-1, ["a"], 64) == [errno.EBADF]


def test_proc_stat_of_a_process_that_shaped_its_comm() -> None:
    # a comm with ') ' and digits must not shift the fields: parsed from the LAST ')'. A
    # process may only rename itself: this one does, for the duration.
    with open("/proc/thread-self/comm", "rb") as f:
        old = f.read().rstrip(b"\n")
    try:
        with open("/proc/thread-self/comm", "wb") as f:
            f.write(b") 1 2 3 (")
        got = procstats.read_stats([os.getpid()])[0]
        with open(f"/proc/{os.getpid()}/stat", "rb") as f:
            raw = f.read()
    finally:
        with open("/proc/thread-self/comm", "wb") as f:
            f.write(old)
    assert b"() 1 2 3 ()" in raw
    assert isinstance(got, tuple) and got[2] > 4096   # the RSS field, not a digit of the comm
    fields = raw[raw.rindex(b")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    assert got[0] >= ticks * procstats.TICK_USEC and got[1] >= got[0]
    assert procstats.parse_stat(raw) is not None
    p = subprocess.Popen(["true"])
    p.wait()                                          # reaped: no /proc entry any more
    gone = procstats.read_stats([p.pid])[0]
    assert gone == errno.ENOENT and procstats.parse_stat(gone) is None
    assert procstats.read_stats([0, -1, 2**40]) == [errno.EINVAL] * 3


def test_parse_stat_reads_the_fields_by_number() -> None:
    # fields 14-17 (utime, stime, cutime, cstime) and 24 (rss) of a line made up here
    line = b"42 (a) b) S " + b" ".join(str(n).encode() for n in range(4, 14)) \
        + b" 100 200 30 40 20 0 1 0 5 4096 7 18446744073709551615 1 2\n"
    got = procstats.parse_stat(line)
    assert got == (300 * procstats.TICK_USEC, 370 * procstats.TICK_USEC, 7 * procstats.PAGE)


@pytest.mark.parametrize("raw", [b"", b"1 (x", b"1 (x) S", b"1 (x) S " + b"a " * 30,
                                 b")" * 5000, b"1 (x) S" + b" 1" * 4090, errno.ENOENT,
                                 b"1 (x) S 1 1 1 1 1 1 1 1 1 1 -5 1 1 1 20 0 1 0 1 1 1",
                                 b"1 (x) S 1 1 1 1 1 1 1 1 1 1 " + b"9" * 30
                                 + b" 1 1 1 20 0 1 0 1 1 1"])
def test_parse_stat_refuses_what_is_not_a_stat_line(raw: bytes | int) -> None:
    assert procstats.parse_stat(raw) is None


def test_sole_members(tmp_path: Path) -> None:
    cases = {"one": b"123\n", "two": b"123\n124\n", "longer": b"1234\n", "empty": b"",
             "noeol": b"123", "full": b"123\n" + b"x" * 4096}
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "cgroup.procs").write_bytes(text)
    (tmp_path / "link").symlink_to(tmp_path / "one")
    names = [*cases, "link", "missing", "../" + tmp_path.name + "/one", "/etc"]
    got = procstats.sole_members(str(tmp_path), names, [123] * len(names))
    assert got == [True] + [False] * (len(names) - 1)
    assert procstats.sole_members(str(tmp_path), ["one", "one"], [0, 12]) == [False, False]
    procstats.close_fds()


def test_attach_pids_reads_the_pid_word_and_takes_nothing_else() -> None:
    base = f"/dev/shm/pvtest-attach-{os.getpid()}"
    made = [f"{base}-{k}" for k in range(5)]
    try:
        with open(made[0], "wb") as f:
            f.write(bytes(4) + (1234).to_bytes(4, "little") + b"rest")
        with open(made[1], "wb") as f:
            f.write(bytes(64))                     # a page nobody attached to
        with open(made[2], "wb") as f:
            f.write(b"\1\2\3")                     # too short to hold a pid
        os.symlink(made[0], made[3])               # a symlink to a page that says 1234
        os.mkfifo(made[4])                         # never blocks
        got = procstats.attach_pids([n[len("/dev/shm"):] for n in made]
                                    + ["/missing-page", "/../etc/passwd"])
        assert got == [1234, 0, 0, 0, 0, 0, 0]
    finally:
        for path in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
