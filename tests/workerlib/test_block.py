"""worker.block: layout v1, create/attach/validation, commands, exit record seqlock."""

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
from worker.block import BlockError, ControlBlock, ExitRecord

ATTACH = """
import sys
from worker.block import ControlBlock, BlockError
try:
    ControlBlock.attach(sys.argv[1]).close()
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


def test_create_then_attach_sees_every_field(new_block: Callable[..., ControlBlock]) -> None:
    blk = new_block("web:3", slot=3, epoch=0xFEEDFACE12345678)
    st = os.stat("/dev/shm/" + blk.name[1:])
    assert st.st_size == 4096 and st.st_mode & 0o777 == 0o600
    blk.set_spawned(4242, 987654, 7)
    with ControlBlock.attach(blk.name) as other:
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
    before = time.time_ns()
    block.write_exit(-9, 2)  # any source but NONE (0) is read back as written
    rec = block.read_exit()
    assert rec is not None and (rec.status, rec.source) == (-9, 2)
    assert before <= rec.time_ns <= time.time_ns()
    assert block.view.load_u32(B.OFF_EXIT_SEQ) == 2
    block.write_exit(3, B.EXIT_SRC_WORKER)
    rec = block.read_exit()
    assert rec is not None and rec == ExitRecord(3, rec.time_ns, B.EXIT_SRC_WORKER)
    # A writer that died mid-write left the seq odd: the next writer still publishes.
    block.view.store_u32(B.OFF_EXIT_SEQ, 5)
    block.write_exit(0, 3)
    assert block.view.load_u32(B.OFF_EXIT_SEQ) % 2 == 0
    rec = block.read_exit()
    assert rec is not None and rec.status == 0
    with pytest.raises(OverflowError):
        block.write_exit(2**31, B.EXIT_SRC_WORKER)


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
    assert B.list_blocks(prefix) == [a.name]
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
        (B.OFF_VERSION, 2, 4, "layout version is 0x2, expected 0x1"),
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


def test_attach_does_not_truncate_a_larger_object(shm_names: Callable[[str], str]) -> None:
    name = shm_names("big:0")
    with ControlBlock.create(name, slot=0, supervisor_pid=1, epoch=1):
        pass
    shm = posix_ipc.SharedMemory(name)
    try:
        os.ftruncate(shm.fd, 16384)
    finally:
        shm.close_fd()
    ControlBlock.attach(name).close()
    assert os.stat("/dev/shm/" + name[1:]).st_size == 16384


def test_child_sees_fields_written_by_parent(block: ControlBlock) -> None:
    block.set_spawned(77, 88, 99)
    code = textwrap.dedent(
        """
        import sys
        from worker.block import ControlBlock
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
