"""Nothing in /dev/shm can crash, fool or stall the daemon (control block layout v2).

Each test is a regression test for a way the daemon could be hurt through its control blocks:
a worker truncating or scribbling on its pages, a full /dev/shm, names planted by another
local user, and a worker under ``user:`` reaching for pages that are not its own. Root only
(CI is root), with the real unprivileged user of tests/security/conftest.py."""

from __future__ import annotations

import os
import re
import signal
import stat
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import User
from tests.support import daemon as support  # DaemonProcess, SUPERVISORD, pid_alive, ...
from tests.support.wait import wait_until
from worker import block as B


def as_user(user: User, argv: list[str], data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run argv as user (its own uid and gid, no supplementary groups), data on stdin."""
    return subprocess.run(argv, user=user.uid, group=user.gid, extra_groups=[], input=data,
                          capture_output=True, timeout=30, check=False)


def popen_as_user(user: User, argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, user=user.uid, group=user.gid, extra_groups=[],
                            start_new_session=True, stdin=subprocess.DEVNULL)


pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI is root)")]

SHM = "/dev/shm/"
CTL_PATH = '"/dev/shm/${PYVISOR_BLOCK#/}"'


def shell(script: str) -> dict[str, Any]:
    return {"command": ["sh", "-c", script], "start_seconds": 0.2}


def wait_file(path: Path, what: str) -> None:
    wait_until(lambda: path.exists(), 15, what)


def assert_daemon_fine(d: support.DaemonProcess) -> None:
    for _ in range(3):
        r = d.ctl("status")
        assert r.returncode in (0, 3), f"status failed: {r.returncode}\n{r.stdout}{r.stderr}"
    assert d.proc is not None and d.proc.poll() is None, (
        f"supervisord died (rc {d.proc.returncode if d.proc else None})\n{d.log_text()}")


@pytest.mark.parametrize("page", ["ctl", "status"])
def test_a_worker_truncating_its_pages_cannot_crash_the_daemon(
        daemon: Any, tmp_path: Path, page: str) -> None:
    target = CTL_PATH if page == "ctl" else '"/dev/shm/${PYVISOR_BLOCK#/}".*'
    mark = tmp_path / "truncated"
    d = daemon({"w": shell(f"truncate -s 0 {target} && touch {mark}; exec sleep 1000")})
    wait_file(mark, "the worker to truncate its page")
    d.wait_state("w:0", "RUNNING")
    assert_daemon_fine(d)
    r = d.ctl("stop", "w")
    assert r.returncode == 0, r.stdout + r.stderr
    d.wait_state("w:0", "STOPPED")
    assert_daemon_fine(d)
    assert "SIGBUS" not in d.log_text()


def test_a_worker_under_user_cannot_truncate_its_ctl_page(
        other_user: User, daemon: Any, tmp_path: Path) -> None:
    out = tmp_path / "logs" / "w-0.out.log"
    d = daemon({"w": {**shell(f"truncate -s 0 {CTL_PATH} || echo denied; exec sleep 1000"),
                      "user": other_user.name}})
    wait_until(lambda: out.exists() and "denied" in out.read_text(), 15,
                       "the truncation to be refused")
    name = B.shm_name(d.prefix, "w:0")
    assert os.stat(SHM + name[1:]).st_size == B.BLOCK_SIZE
    assert_daemon_fine(d)


def test_a_full_dev_shm_is_a_spawn_failure_not_a_crash(
        daemon_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the daemon in its own mount namespace, on a tiny /dev/shm that is already full
    wrapper = tmp_path / "supervisord-small-shm"
    wrapper.write_text(
        "#!/bin/sh\n"
        "exec unshare --mount --propagation private sh -c '"
        "mount -t tmpfs -o size=8k tmpfs /dev/shm || exit 99; "
        "head -c 65536 /dev/zero > /dev/shm/fill 2>/dev/null; "
        f'exec "$0" "$@"\' {support.SUPERVISORD} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(support, "SUPERVISORD", str(wrapper))
    d = daemon_factory({"w": {"command": "sleep 1000", "start_seconds": 0.2}}).start()
    name = B.shm_name(d.prefix, "w:0")
    d.wait_log(rf"cannot create control block {name}: No space left on device "
               r"\(/dev/shm is full\)")
    assert_daemon_fine(d)
    assert support.pids_with_block_prefix(d.prefix) == []


def forged_ctl(name: str, pid: int, ticks: int, uid: int, pgid: int,
               exit_seq: int = 0) -> bytes:
    """A ctl page as the daemon would write it, naming (pid, ticks, uid, pgid)."""
    buf = bytearray(B.BLOCK_SIZE)
    struct.pack_into("<QIIII", buf, 0, B.MAGIC, B.VERSION, B.HEADER_SIZE, B.BLOCK_SIZE, 0)
    buf[B.OFF_BOOT_ID:B.OFF_BOOT_ID + 16] = B.read_boot_id()
    struct.pack_into("<I", buf, B.OFF_SPAWNED_PID, pid)
    struct.pack_into("<I", buf, B.OFF_SPAWNED_UID, uid)
    struct.pack_into("<Q", buf, B.OFF_SPAWNED_START, ticks)
    struct.pack_into("<I", buf, B.OFF_SPAWNED_PGID, pgid)
    status = f"{name}.{'0' * 16}".encode()
    buf[B.OFF_STATUS_NAME:B.OFF_STATUS_NAME + len(status)] = status
    return bytes(buf)


def test_names_planted_by_another_user_are_ignored(
        other_user: User, daemon_factory: Any) -> None:
    d = daemon_factory({"w": {"command": "sleep 1000", "start_seconds": 0.2, "numprocs": 6}})
    path = {i: SHM + B.shm_name(d.prefix, f"w:{i}")[1:] for i in range(6)}
    stray = SHM + f"{d.prefix}.x:0"
    own = popen_as_user(other_user, ["sleep", "1000"])
    try:
        ticks = B.proc_start_ticks(own.pid)
        planted = {
            1: forged_ctl(B.shm_name(d.prefix, "w:1"), 4294967295, 1, other_user.uid, 1),
            2: forged_ctl(B.shm_name(d.prefix, "w:2"), own.pid, ticks, other_user.uid, own.pid),
            3: os.urandom(B.BLOCK_SIZE),
        }
        for argv in (["mkdir", stray], ["mkdir", path[0]], ["mkfifo", path[4]],
                     ["ln", "-s", "/etc/passwd", path[5]]):
            assert as_user(other_user, argv).returncode == 0, argv
        for i, data in planted.items():
            r = as_user(other_user, ["sh", "-c", 'cat > "$1"', "sh", path[i]], data)
            assert r.returncode == 0, r.stderr
        # and a status page with a seqlock stuck odd, for the forged block naming its process
        status = f"{path[2]}.{'0' * 16}"
        r = as_user(other_user, ["sh", "-c", 'cat > "$1"', "sh", status],
                          struct.pack("<I", 0) * 32 + struct.pack("<I", 7) + bytes(4000))
        assert r.returncode == 0, r.stderr
        d.allow_leftovers = True   # the stray directory stays: the fixture removes it
        d.start()
        pids = wait_until(lambda: (p := d.pids()) and len(p) == 6 and p, 20,
                                  "all 6 real instances RUNNING")
        assert own.pid not in pids.values(), "a planted block made the daemon adopt"
        assert own.poll() is None, "the planted process was signalled"
        rows = d.status_json()
        assert not any(r["adopted"] for r in rows), rows
        owner = f"uid {other_user.uid}"
        d.wait_log(rf"x:0 ignoring {stray} \(owned by {owner}\)")
        d.wait_log(rf"w:1 ignoring {path[1]} \(owned by {owner}\): not a control block of "
                   r"ours \(not ours\)")
        for i in range(6):
            st = os.lstat(path[i])
            assert stat.S_ISREG(st.st_mode) and st.st_uid == 0, f"w:{i} is the daemon's now"
        assert_daemon_fine(d)
        d.stop()
        assert own.poll() is None
    finally:
        own.kill()
        own.wait()
        for p in (stray, f"{path[2]}.{'0' * 16}"):
            if os.path.isdir(p):
                os.rmdir(p)
            elif os.path.lexists(p):
                os.unlink(p)


@pytest.mark.parametrize("how", ["delete", "scribble"])
def test_a_broken_status_page_never_causes_a_duplicate(
        daemon_factory: Any, tmp_path: Path, how: str) -> None:
    status = '"/dev/shm/${PYVISOR_BLOCK#/}".*'
    mark = tmp_path / "done"
    act = (f"rm -f {status}" if how == "delete" else
           f"for f in {status}; do dd if=/dev/urandom of=\"$f\" bs=4096 count=1 "
           "conv=notrunc 2>/dev/null; done")
    d = daemon_factory({"w": shell(f"{act}; touch {mark}; exec sleep 1000")}).start()
    pid = d.wait_state("w:0", "RUNNING")["pid"]
    wait_file(mark, "the worker to break its status page")
    d.allow_leftovers = how == "delete"
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    d.start()
    row = d.wait_state("w:0", "RUNNING")
    assert row["pid"] == pid and row["adopted"], row
    assert support.pids_with_block_prefix(d.prefix) == [pid], "a duplicate was started"
    if how == "delete":
        d.wait_log(r"w:0 status page .* is gone; adopting pid \d+ without its heartbeat")
    assert_daemon_fine(d)


def test_a_worker_under_user_reaches_only_its_own_pages(
        other_user: User, daemon: Any, tmp_path: Path) -> None:
    out = tmp_path / "logs" / "mine-0.out.log"
    script = (
        f"ctl={CTL_PATH}; b=${{PYVISOR_BLOCK#/}}; other=\"/dev/shm/${{b%.mine:0}}.other:0\"; "
        "cat \"$ctl\" > /dev/null && echo ctl-read-ok; "
        "true >> \"$ctl\" 2>/dev/null || echo ctl-write-denied; "
        "name=$(dd if=\"$ctl\" bs=1 skip=256 count=255 2>/dev/null | tr -d '\\000'); "
        "printf x | dd of=\"/dev/shm$name\" bs=1 seek=2048 conv=notrunc 2>/dev/null "
        "&& echo status-write-ok; "
        "true >> \"$other\" 2>/dev/null || echo other-ctl-write-denied; "
        "for f in \"$other\".*; do cat \"$f\" > /dev/null 2>&1 || echo other-status-denied; "
        "done; echo checked; exec sleep 1000")
    d = daemon({"other": {"command": "sleep 1000", "start_seconds": 0.2},
                "mine": {**shell(script), "user": other_user.name,
                         "depends_on": ["other"]}})
    wait_until(lambda: out.exists() and "checked" in out.read_text(), 15,
                       "the worker's checks")
    lines = out.read_text().split()
    assert lines == ["ctl-read-ok", "ctl-write-denied", "status-write-ok",
                     "other-ctl-write-denied", "other-status-denied", "checked"], lines
    name = B.shm_name(d.prefix, "mine:0")
    st = os.stat(SHM + name[1:])
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, other_user.gid, 0o640)
    assert_daemon_fine(d)


def test_a_status_page_orphaned_by_a_killed_daemon_is_removed(daemon_factory: Any) -> None:
    """A daemon killed between creating an instance's two pages leaves a status page that no
    ctl page names; the next daemon removes it (and only such pages)."""
    d = daemon_factory({"w": {"command": "sleep 100000", "start_seconds": 0.1}}).start()
    d.wait_state("w:0", "RUNNING")
    orphan = Path("/dev/shm") / f"{d.prefix}.w:7.{'ab' * 8}"      # w:7 has no ctl page
    orphan.write_bytes(b"\0" * 4096)
    orphan.chmod(0o600)
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    d.start()
    d.wait_log(rf"removing /dev/shm/{re.escape(orphan.name)}: a status page no control block "
               "names")
    assert not orphan.exists()
    assert d.wait_state("w:0", "RUNNING")["adopted"]


def test_a_flood_of_planted_names_is_one_summary_line_not_a_line_each() -> None:
    # Any local user can plant names under the daemon's prefix (it is derived from the
    # config's path, which anyone can compute); 20,000 of them were 20,000 warnings a start.
    import uuid

    from loguru import logger

    from supervisor import adopt

    prefix = f"pvtest-{uuid.uuid4().hex[:12]}"
    planted = [f"{SHM}{prefix}.w:{i}" for i in range(adopt.MAX_SCAN_WARNINGS + 50)]
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m).rstrip("\n")), format="{message}")
    try:
        for p in planted:
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # 0 bytes
        assert adopt.scan(prefix) == []
    finally:
        logger.remove(sink)
        kept = [p for p in planted if os.path.lexists(p)]
        for p in kept:
            os.unlink(p)
    assert len(kept) == len(planted), "the scan removed names that are not control blocks"
    ignored = [m for m in lines if "not a control block of ours (0 bytes, not 4096)" in m]
    assert len(ignored) == adopt.MAX_SCAN_WARNINGS, lines
    assert lines[-1] == (f"ignoring 50 more names of the same kinds under {SHM}{prefix}.* "
                         f"(see them: ls -l {SHM}{prefix}.*)"), lines
    assert len(lines) == adopt.MAX_SCAN_WARNINGS + 1, lines
