"""worker/ctlblock.h: a C program (compiled here with gcc) and Python share a block."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import posix_ipc
import pytest

from tests.support.child import ROOT
from worker import block as B
from worker.block import ControlBlock

C_PROGRAM = r"""
#include "worker/ctlblock.h"
#include <inttypes.h>

int main(int argc, char **argv)
{
    struct pyvisor_block b;
    if (argc == 3) { /* "attach-only": just try pyvisor_attach */
        if (pyvisor_attach(argv[1], &b) != 0) { perror("pyvisor_attach"); return 1; }
        pyvisor_close(&b, 0);
        return 0;
    }
    if (argc != 2) return 2;
    /* read the header fields raw first (pyvisor_attach publishes pid/state) */
    int fd = shm_open(argv[1], O_RDWR, 0);
    if (fd < 0) { perror("shm_open"); return 1; }
    void *raw = mmap(NULL, PYVISOR_BLOCK_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (raw == MAP_FAILED) { perror("mmap"); return 1; }
    printf("magic=%016" PRIx64 " version=%u header=%u size=%u slot=%u\n",
           pyvisor_load_u64(raw, PYVISOR_OFF_MAGIC), pyvisor_load_u32(raw, PYVISOR_OFF_VERSION),
           pyvisor_load_u32(raw, PYVISOR_OFF_HEADER_SIZE),
           pyvisor_load_u32(raw, PYVISOR_OFF_BLOCK_SIZE), pyvisor_load_u32(raw, PYVISOR_OFF_SLOT));
    printf("supervisor_pid=%u epoch=%" PRIu64 " spawned_pid=%u incarnation=%" PRIu64
           " spawned_start=%" PRIu64 "\n",
           pyvisor_load_u32(raw, PYVISOR_OFF_SUPERVISOR_PID),
           pyvisor_load_u64(raw, PYVISOR_OFF_EPOCH), pyvisor_load_u32(raw, PYVISOR_OFF_SPAWNED_PID),
           pyvisor_load_u64(raw, PYVISOR_OFF_INCARNATION),
           pyvisor_load_u64(raw, PYVISOR_OFF_SPAWNED_START));
    uint32_t cmd = pyvisor_load_u32(raw, PYVISOR_OFF_CMD);
    printf("cmd_seq=%u cmd=%u deadline=%" PRIu64 "\n", cmd >> 8, cmd & 0xff,
           pyvisor_load_u64(raw, PYVISOR_OFF_DEADLINE));
    munmap(raw, PYVISOR_BLOCK_SIZE);

    if (pyvisor_attach(argv[1], &b) != 0) { perror("pyvisor_attach"); return 1; }
    pyvisor_set_state(&b, PYVISOR_ST_READY);
    int stop = pyvisor_should_stop(&b); /* acks the pending STOP_GRACEFUL */
    pyvisor_heartbeat(&b);
    pyvisor_add_work(&b, 41);
    pyvisor_add_work(&b, 1);
    printf("stop=%d stop_cmd=%u\n", stop, b.stop_cmd);
    pyvisor_close(&b, 7);
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    d = tmp_path_factory.mktemp("cheader")
    src, exe = d / "prog.c", d / "prog"
    src.write_text(C_PROGRAM)
    r = subprocess.run(
        [gcc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{ROOT}", str(src),
         "-o", str(exe)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, f"gcc failed:\n{r.stderr}"
    return exe


def test_c_worker_reads_python_fields_and_writes_back(
    c_program: Path, new_block: Callable[..., ControlBlock]
) -> None:
    blk = new_block("cw:5", slot=5, epoch=1234567890123)
    blk.set_spawned(31337, 555, 9)
    seq = blk.post_command(B.CMD_STOP_GRACEFUL, 777)
    r = subprocess.run(
        [str(c_program), blk.name], check=False, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, f"C worker failed: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    lines = r.stdout.splitlines()
    assert lines[0] == f"magic={B.MAGIC:016x} version=1 header=512 size=4096 slot=5", lines
    assert lines[1] == (
        f"supervisor_pid={blk.supervisor_pid} epoch=1234567890123 spawned_pid=31337 "
        "incarnation=9 spawned_start=555"
    ), lines
    assert lines[2] == f"cmd_seq={seq} cmd=1 deadline=777", lines
    assert lines[3] == "stop=1 stop_cmd=1", lines
    # what the C worker wrote, read back in Python
    assert blk.ack == (seq, B.ST_EXITED)
    assert blk.work_done == 42
    assert blk.heartbeat_ns > 0 and blk.busy_since_ns == 0
    assert blk.pid > 0 and blk.start_ticks > 0
    rec = blk.read_exit()
    assert rec is not None and (rec.status, rec.source) == (7, B.EXIT_SRC_WORKER), rec


@pytest.mark.parametrize("size", [64, 8192])
def test_c_attach_checks_size_and_magic(
    c_program: Path, shm_names: Callable[[str], str], size: int
) -> None:
    name = shm_names("short:0")
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=size)
    shm.close_fd()
    r = subprocess.run(
        [str(c_program), name, "attach-only"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1, f"expected a clean refusal: rc={r.returncode} {r.stderr}"
    want = "Message too long" if size < 4096 else "Invalid argument"
    assert f"pyvisor_attach: {want}" in r.stderr, r.stderr
