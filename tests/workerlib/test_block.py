"""worker.block and worker.ctlpage: layout v2 (a daemon-owned ctl page, a worker-owned status
page), create/attach/validation, commands, exit record seqlock, and a daemon side that no
truncated or scribbled status page can fault."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable

import posix_ipc
import pytest

from tests.support.child import python_env
from worker import block as B
from worker._ctlword import View
from worker.api import attach_pages
from worker.block import BlockError, ExitRecord, write_exit
from worker.ctlpage import ControlBlock

# The worker's side of attaching (ctl page read-only, then the status page it names).
ATTACH = """
import sys
from worker.api import attach_pages
from worker.block import BlockError
try:
    for mm in attach_pages(sys.argv[1])[:2]:
        mm.close()
    print("attached")
except BlockError as e:
    print("BlockError:", e)
except OSError as e:
    print(type(e).__name__ + ":", e)
"""


def attach_in_child(name: str) -> str:
    """Attach in a subprocess (a bug could mean SIGBUS); its one line of output."""
    r = subprocess.run(
        [sys.executable, "-c", ATTACH, name],
        env=python_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, f"attach crashed: rc={r.returncode} stderr={r.stderr}"
    return r.stdout.strip()


def status_view(block: ControlBlock) -> tuple[View, Callable[[], None]]:
    """The status page as its worker maps it (read-write), and how to unmap it."""
    ctl, status, _name = attach_pages(block.name)
    v = View(status)

    def close() -> None:
        v.close()
        status.close()
        ctl.close()

    return v, close


def test_create_then_attach_sees_every_field(new_block: Callable[..., ControlBlock]) -> None:
    blk = new_block("web:3", slot=3, epoch=0xFEEDFACE12345678)
    st = os.stat("/dev/shm/" + blk.name[1:])
    assert st.st_size == 4096 and st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
    assert blk.status_name.startswith(blk.name + ".") and len(blk.status_name) == len(blk.name) + 17
    assert B.status_name_ok(blk.name, blk.status_name)
    sst = os.stat("/dev/shm/" + blk.status_name[1:])
    assert sst.st_size == 4096 and sst.st_mode & 0o777 == 0o600
    assert sst.st_blocks * 512 >= 4096, "the status page is allocated up front"
    assert st.st_blocks * 512 >= 4096, "the ctl page is allocated up front"
    blk.set_spawned(4242, 987654, 7, 0x1234, 1001, 4242)
    with ControlBlock.attach(blk.name) as other:
        assert other.status_name == blk.status_name
        assert (other.spawned_uid, other.spawned_pgid, other.config_hash) == (1001, 4242, 0x1234)
        assert other.slot == 3
        assert other.epoch == 0xFEEDFACE12345678
        assert other.supervisor_pid == os.getpid()
        assert other.boot_id == B.read_boot_id()
        assert (other.spawned_pid, other.spawned_start_ticks, other.incarnation) == (
            4242, 987654, 7,
        )  # fmt: skip
        assert other.cmd == (0, B.CMD_NONE) and other.ack == (0, B.ST_INIT)
        assert (other.pid, other.start_ticks, other.heartbeat_ns) == (0, 0, 0)
        assert (other.work_done, other.busy_since_ns, other.deadline_ns) == (0, 0, 0)
        assert other.read_exit() is None
    assert os.stat("/dev/shm/" + blk.name[1:]).st_size == 4096, "attach must not resize"


def test_create_refuses_an_existing_name(block: ControlBlock) -> None:
    with pytest.raises(FileExistsError, match=block.name):
        ControlBlock.create(block.name, slot=0, supervisor_pid=1, epoch=1)


def test_attach_missing_block(shm_names: Callable[[str], str]) -> None:
    name = shm_names("gone:0")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ControlBlock.attach(name)


def test_post_command_sequence_and_wrap(block: ControlBlock) -> None:
    assert block.post_command(B.CMD_STOP_GRACEFUL, 12345) == 1
    assert block.cmd == (1, B.CMD_STOP_GRACEFUL) and block.deadline_ns == 12345
    block.view.store_u32(B.OFF_CMD, (0xFFFFFF << 8) | B.CMD_NONE)
    assert block.post_command(B.CMD_STOP_GRACEFUL) == 0, "the 24-bit seq wraps to 0"
    assert block.cmd == (0, B.CMD_STOP_GRACEFUL) and block.deadline_ns == 0
    with pytest.raises(ValueError):
        block.post_command(256)


def test_exit_record_seqlock(block: ControlBlock) -> None:
    v, close = status_view(block)
    try:
        before = time.time_ns()
        write_exit(v, -9, B.EXIT_SRC_WORKER)
        rec = block.read_exit()
        assert rec is not None and (rec.status, rec.source) == (-9, B.EXIT_SRC_WORKER)
        assert before <= rec.time_ns <= time.time_ns()
        assert v.load_u32(B.SOFF_EXIT_SEQ) == 2
        write_exit(v, 3, B.EXIT_SRC_WORKER)
        assert block.read_exit() == ExitRecord(3, block.read_exit().time_ns, B.EXIT_SRC_WORKER)  # type: ignore[union-attr]
        # A writer that died mid-write left the seq odd: the next writer still publishes.
        v.store_u32(B.SOFF_EXIT_SEQ, 5)
        assert block.read_exit() is None, "a seqlock stuck odd reads as unknown, not an error"
        write_exit(v, 0, B.EXIT_SRC_WORKER)
        assert v.load_u32(B.SOFF_EXIT_SEQ) % 2 == 0
        assert block.read_exit() is not None and block.read_exit().status == 0  # type: ignore[union-attr]
        # a source the daemon does not know, or a status no process can have: unknown
        write_exit(v, 0, 3)
        assert block.read_exit() is None
        write_exit(v, 100000, B.EXIT_SRC_WORKER)
        assert block.read_exit() is None
        with pytest.raises(OverflowError):
            write_exit(v, 2**31, B.EXIT_SRC_WORKER)
    finally:
        close()


def test_garbage_in_the_status_page_reads_as_unknown(block: ControlBlock) -> None:
    v, close = status_view(block)
    try:
        v.store_u32(B.SOFF_PID, 4294967295)
        v.store_u32(B.SOFF_ACK, (5 << 8) | 0xEE)
        v.store_u64(B.SOFF_HEARTBEAT, 2**64 - 1)
        assert (block.pid, block.ack, block.heartbeat_ns) == (0, (0, B.ST_INIT), 0)
        v.store_u32(B.SOFF_PID, os.getpid())
        v.store_u32(B.SOFF_ACK, (5 << 8) | B.ST_READY)
        assert (block.pid, block.ack) == (os.getpid(), (5, B.ST_READY))
    finally:
        close()


@pytest.mark.parametrize("how", ["truncate", "unlink"])
def test_a_broken_status_page_never_faults_the_daemon(block: ControlBlock, how: str) -> None:
    v, close = status_view(block)
    v.store_u32(B.SOFF_PID, os.getpid())
    v.store_u64(B.SOFF_WORK_DONE, 5)
    close()
    if how == "truncate":
        os.truncate("/dev/shm/" + block.status_name[1:], 0)
    else:
        os.unlink("/dev/shm/" + block.status_name[1:])
    # the daemon holds no fd of the page: it reads it by name, so a page that is gone or
    # truncated reads as unknown
    assert (block.pid, block.ack, block.heartbeat_ns, block.work_done) == (0, (0, B.ST_INIT), 0, 0)
    assert block.read_exit() is None and block.busy_since_ns == 0
    assert block.post_command(B.CMD_STOP_GRACEFUL) == 1  # the ctl page is untouched
    with ControlBlock.attach(block.name) as again:  # reopened by name: the page is gone
        assert again.has_status == (how == "truncate")
        assert (again.pid, again.ack, again.work_done, again.read_exit()) == (
            0, (0, B.ST_INIT), 0, None)


@pytest.mark.parametrize("what", ["fifo", "directory", "symlink", "other-owner"])
def test_a_status_page_replaced_by_its_worker_reads_as_unknown(block: ControlBlock,
                                                               what: str) -> None:
    """The daemon opens the status page by name for each read: whatever the worker (who owns
    it) puts there instead reads as unknown, without blocking or raising."""
    if what == "other-owner" and os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    v, close = status_view(block)
    v.store_u32(B.SOFF_PID, os.getpid())
    close()
    assert block.pid == os.getpid()
    path = "/dev/shm/" + block.status_name[1:]
    os.unlink(path)
    try:
        if what == "fifo":
            os.mkfifo(path, 0o600)
        elif what == "directory":
            os.mkdir(path, 0o700)
        elif what == "symlink":
            os.symlink("/etc/passwd", path)
        else:
            with open(path, "wb") as f:
                f.write(os.getpid().to_bytes(4, "little") * 1024)
            os.chown(path, 65534, 65534)
        assert (block.pid, block.ack, block.work_done, block.read_exit()) == (
            0, (0, B.ST_INIT), 0, None)
        with block.reading():
            assert block.heartbeat_ns == 0 and block.attached is False
    finally:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)


def test_a_truncated_ctl_page_is_left_alone(block: ControlBlock) -> None:
    os.truncate("/dev/shm/" + block.name[1:], 0)
    assert not block.intact()
    assert block.post_command(B.CMD_STOP_GRACEFUL) == 0, "no store into a page past its end"
    block.set_spawned(1, 2, 3)  # a no-op, no SIGBUS
    assert block.cmd == (0, 0) and block.spawned_pid == 0


def test_the_worker_maps_its_ctl_page_read_only(block: ControlBlock) -> None:
    ctl, status, name = attach_pages(block.name)
    v = View(ctl)
    try:
        assert name == block.status_name and v.readonly
        with pytest.raises(TypeError, match="read-only"):
            v.store_u32(B.OFF_CMD, 1)
        block.post_command(B.CMD_STOP_GRACEFUL)
        assert v.load_u32(B.OFF_CMD) == (1 << 8) | B.CMD_STOP_GRACEFUL
        assert v.wait_u32(B.OFF_CMD, 0, 0.01), "a futex wait works on a read-only mapping"
    finally:
        v.close()
        ctl.close()
        status.close()


def test_shm_name_validation() -> None:
    assert B.shm_name("pyvisor-0123456789ab", "web:0") == "/pyvisor-0123456789ab.web:0"
    assert B.shm_name("p", "a.b-c_d:12") == "/p.a.b-c_d:12"
    for prefix, inst in [
        ("", "web:0"), ("a/b", "web:0"), ("a.b", "web:0"), ("-x", "web:0"),
        ("p", "web"), ("p", "web:"), ("p", "web:x"), ("p", "we/b:0"), ("p", ".web:0"),
        ("p", "w" * 65 + ":0"), ("p", ":0"), ("p", "web:0:1"), ("p", "web:١"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match="invalid"):
            B.shm_name(prefix, inst)


def test_list_blocks_and_proc_helpers(new_block: Callable[..., ControlBlock]) -> None:
    a, b = new_block("a:0"), new_block("b:1")
    prefix = a.name[1:].partition(".")[0]
    assert B.list_blocks(prefix) == [a.name], "ctl pages only, never status pages"
    assert b.name in B.list_blocks(b.name[1:].partition(".")[0])
    assert B.list_blocks("no-such-prefix-" + uuid.uuid4().hex) == []
    assert len(B.read_boot_id()) == 16
    assert B.proc_start_ticks(os.getpid()) > 0
    assert B.proc_start_ticks(1) <= B.proc_start_ticks(os.getpid())
    with pytest.raises(ProcessLookupError):
        B.proc_start_ticks(2**22 + 12345)
    assert B.parse_start_ticks("1 (a) b) c) S " + " ".join(str(i) for i in range(4, 30))) == 22


@pytest.mark.parametrize(
    ("off", "value", "width", "message"),
    [
        (B.OFF_MAGIC, 0x4141414141414141, 8, "wrong magic 0x4141414141414141 (not a pyvisor"),
        (B.OFF_MAGIC, 0, 8, "not initialised"),
        (B.OFF_VERSION, 1, 4, "layout version is 0x1, expected 0x2"),
        (B.OFF_HEADER_SIZE, 0x100, 4, "header size is 0x100, expected 0x200"),
        (B.OFF_BLOCK_SIZE, 8192, 4, "block size is 0x2000, expected 0x1000"),
    ],
)
def test_corrupted_header_is_refused(
    block: ControlBlock, off: int, value: int, width: int, message: str
) -> None:
    (block.view.store_u64 if width == 8 else block.view.store_u32)(off, value)
    line = attach_in_child(block.name)
    assert line.startswith(f"BlockError: control block {block.name}: "), line
    assert message in line, line
    with pytest.raises(BlockError, match=message.split(" (")[0]):
        ControlBlock.attach(block.name)


def test_block_from_before_a_reboot_is_refused(block: ControlBlock) -> None:
    block._mm[B.OFF_BOOT_ID : B.OFF_BOOT_ID + 16] = uuid.uuid4().bytes
    with pytest.raises(BlockError, match="created during another boot"):
        ControlBlock.attach(block.name)
    line = attach_in_child(block.name)
    assert f"control block {block.name}: created during another boot" in line, line
    assert "left over from before a reboot" in line, line


@pytest.mark.parametrize("size", [0, 100, 4095])
def test_truncated_block_is_refused_without_sigbus(block: ControlBlock, size: int) -> None:
    shm = posix_ipc.SharedMemory(block.name)
    try:
        os.ftruncate(shm.fd, size)
    finally:
        shm.close_fd()
    # (the creator's own mapping is now partly past the end: it must not be touched)
    with pytest.raises(BlockError, match=f"size is {size} bytes"):
        ControlBlock.attach(block.name)
    line = attach_in_child(block.name)
    assert line == (
        f"BlockError: control block {block.name}: size is {size} bytes, expected at least "
        "4096 (truncated, or not a pyvisor block)"
    ), line


def test_foreign_shm_object_is_refused(shm_names: Callable[[str], str]) -> None:
    name = shm_names("foreign:0")
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=8192)
    try:
        os.write(shm.fd, b"hello, not a block" * 10)
    finally:
        shm.close_fd()
    line = attach_in_child(name)
    magic = int.from_bytes(b"hello, n", "little")
    assert line.startswith(f"BlockError: control block {name}: wrong magic {magic:#018x}"), line


def test_close_is_idempotent_and_unlink_ignores_missing(block: ControlBlock) -> None:
    block.unlink()
    block.unlink()
    block.close()
    block.close()
    assert block.closed and "closed" in repr(block)
    with pytest.raises(ValueError, match="closed"):
        block.cmd  # noqa: B018


def test_a_status_page_name_that_breaks_the_rule_is_refused(block: ControlBlock) -> None:
    bad = b"/etc/passwd\0"
    block._mm[B.OFF_STATUS_NAME : B.OFF_STATUS_NAME + len(bad)] = bad
    line = attach_in_child(block.name)
    assert "names no valid status page ('/etc/passwd')" in line, line
    with pytest.raises(BlockError, match="names no valid status page"):
        ControlBlock.attach(block.name)


def test_attach_does_not_truncate_a_larger_object(shm_names: Callable[[str], str]) -> None:
    name = shm_names("big:0")
    with ControlBlock.create(name, slot=0, supervisor_pid=1, epoch=1) as b:
        status = b.status_name
    try:
        for n in (name, status):
            shm = posix_ipc.SharedMemory(n)
            try:
                os.ftruncate(shm.fd, 16384)
            finally:
                shm.close_fd()
        ControlBlock.attach(name).close()
        assert attach_in_child(name) == "attached"
        assert os.stat("/dev/shm/" + name[1:]).st_size == 16384
        assert os.stat("/dev/shm/" + status[1:]).st_size == 16384
    finally:
        B.unlink_name(status)


def test_child_sees_fields_written_by_parent(block: ControlBlock) -> None:
    block.set_spawned(77, 88, 99)
    code = textwrap.dedent(
        """
        import sys
        from worker.ctlpage import ControlBlock
        with ControlBlock.attach(sys.argv[1]) as b:
            print(b.spawned_pid, b.spawned_start_ticks, b.incarnation, b.epoch)
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code, block.name],
        env=python_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout.split() == ["77", "88", "99", "42"], r
