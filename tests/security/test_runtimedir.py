"""Stale locks and locators in the runtime directory (issue 15, item 12) are removed only
when they are ours, unlocked (or name a dead pid), and never through a link."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from supervisor import paths, runtimedir

DEAD_PID = 2**22 + 4321        # above the kernel's largest pid_max: never a process


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setattr(paths, "runtime_dir", lambda: str(d))
    return d


def test_only_stale_files_of_ours_go(run_dir: Path, tmp_path: Path) -> None:
    (run_dir / "aaaaaaaaaaaa.sock.lock").write_text("123\n")            # stale: removed
    (run_dir / "prefix-pv-x.lock").write_text("123 /etc/x.yaml\n")      # stale: removed
    held = run_dir / "bbbbbbbbbbbb.sock.lock"                            # held: kept
    held.write_text(f"{os.getpid()}\n")
    fd = os.open(held, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    target = tmp_path / "precious.lock"                                  # a link: kept,
    target.write_text("mine\n")                                          # target untouched
    (run_dir / "prefix-link.lock").symlink_to(target)
    linked = tmp_path / "hardlinked"
    linked.write_text("x")
    os.link(linked, run_dir / "prefix-hard.lock")                        # two links: kept
    (run_dir / "dddddddddddd.json").write_text(json.dumps({"pid": DEAD_PID}))   # removed
    (run_dir / "eeeeeeeeeeee.json").write_text(json.dumps({"pid": os.getpid()}))  # kept
    (run_dir / "999999999999.json").write_text(json.dumps(      # another pid namespace's
        {"pid": DEAD_PID, "pidns": (paths.pid_namespace() or 0) + 1}))          # kept
    (run_dir / "cccccccccccc.json").write_text(json.dumps(      # this namespace's: removed
        {"pid": DEAD_PID, "pidns": paths.pid_namespace()}))
    (run_dir / "ffffffffffff.json").write_text("{not json")                        # kept
    (run_dir / "intent-pv-x.json").write_text("{}")                      # not a lock: kept
    (run_dir / "other.lock").write_text("")                              # not one of ours
    (run_dir / "prefix-dir.lock").mkdir()                                # a directory: kept
    try:
        removed = runtimedir.clean_stale()
    finally:
        os.close(fd)
    assert sorted(removed) == ["aaaaaaaaaaaa.sock.lock", "cccccccccccc.json",
                               "dddddddddddd.json", "prefix-pv-x.lock"]
    assert sorted(os.listdir(run_dir)) == [
        "999999999999.json", "bbbbbbbbbbbb.sock.lock", "eeeeeeeeeeee.json", "ffffffffffff.json",
        "intent-pv-x.json", "other.lock", "prefix-dir.lock", "prefix-hard.lock",
        "prefix-link.lock"]
    assert target.read_text() == "mine\n"


def test_another_users_file_is_kept(run_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file another user owns")
    lock = run_dir / "prefix-theirs.lock"
    lock.write_text("")
    os.chown(lock, 65534, 65534)
    assert runtimedir.clean_stale() == []
    assert lock.exists()


def test_a_runtime_dir_others_can_write_is_not_touched(run_dir: Path) -> None:
    (run_dir / "prefix-x.lock").write_text("")
    run_dir.chmod(0o777)
    try:
        assert runtimedir.clean_stale() == []
    finally:
        run_dir.chmod(0o700)
    assert (run_dir / "prefix-x.lock").exists()
