"""worker/ctlblock.h: a C program (compiled here with gcc) and Python share a block, and
every constant of the header has the same value in C as in worker.block."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import posix_ipc
import pytest

from tests.support.child import ROOT
from worker import block as B
from worker.ctlpage import ControlBlock

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
    int fd = shm_open(argv[1], O_RDONLY, 0);
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
    printf("uid=%u pgid=%u config_hash=%" PRIu64 " status=%s\n",
           pyvisor_load_u32(raw, PYVISOR_OFF_SPAWNED_UID),
           pyvisor_load_u32(raw, PYVISOR_OFF_SPAWNED_PGID),
           pyvisor_load_u64(raw, PYVISOR_OFF_CONFIG_HASH),
           (const char *)raw + PYVISOR_OFF_STATUS_NAME);
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


def compile_c(source: str, d: Path) -> Path:
    """Compile a C program against the header as a C worker would; the executable."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    src, exe = d / "prog.c", d / "prog"
    src.write_text(source)
    r = subprocess.run(
        [gcc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{ROOT}", str(src),
         "-o", str(exe)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, f"gcc failed:\n{r.stderr}"
    return exe


@pytest.fixture(scope="module")
def c_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(C_PROGRAM, tmp_path_factory.mktemp("cheader"))


def test_c_worker_reads_python_fields_and_writes_back(
    c_program: Path, new_block: Callable[..., ControlBlock]
) -> None:
    blk = new_block("cw:5", slot=5, epoch=1234567890123)
    blk.set_spawned(31337, 555, 9, 4321, 1001, 31337)
    seq = blk.post_command(B.CMD_STOP_GRACEFUL, 777)
    r = subprocess.run(
        [str(c_program), blk.name], check=False, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, f"C worker failed: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    lines = r.stdout.splitlines()
    assert lines[0] == f"magic={B.MAGIC:016x} version=2 header=512 size=4096 slot=5", lines
    assert lines[1] == (
        f"supervisor_pid={blk.supervisor_pid} epoch=1234567890123 spawned_pid=31337 "
        "incarnation=9 spawned_start=555"
    ), lines
    assert lines[2] == f"cmd_seq={seq} cmd=1 deadline=777", lines
    assert lines[3] == f"uid=1001 pgid=31337 config_hash=4321 status={blk.status_name}", lines
    assert lines[4] == "stop=1 stop_cmd=1", lines
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


HEADER = ROOT / "worker" / "ctlblock.h"
MACRO = re.compile(r"^#define PYVISOR_(\w+)[ \t]+(\S)", re.M)  # object-like, with a value
ENUM = re.compile(r"\benum\s*\{([^}]*)\}")
LAYOUT_LIKE = re.compile(
    r"(S?OFF|CMD|ST|EXIT_SRC|ENV|METRIC)_[A-Z_]+|MAGIC|VERSION|[A-Z_]*_SIZE"
)


def header_constants() -> dict[str, bool]:
    """Every constant worker/ctlblock.h defines, without its PYVISOR_ prefix -> whether it is
    a string: the object-like macros that have a value, and the enumerators."""
    text = HEADER.read_text()
    found = {m[1]: m[2] == '"' for m in MACRO.finditer(text)}
    for body in ENUM.findall(text):
        found.update(dict.fromkeys(re.findall(r"\bPYVISOR_(\w+)\s*=", body), False))
    return found


def print_constants_program(consts: dict[str, bool]) -> str:
    """A C program that prints "NAME value" for each constant, as the header defines it."""
    lines = [
        f'    printf("{name} %s\\n", PYVISOR_{name});' if is_str
        else f'    printf("{name} %llu\\n", (unsigned long long)PYVISOR_{name});'
        for name, is_str in consts.items()
    ]  # fmt: skip
    body = "\n".join(lines)
    return f'#include "worker/ctlblock.h"\n\nint main(void)\n{{\n{body}\n    return 0;\n}}\n'


def test_every_header_constant_has_the_same_value_in_python(tmp_path: Path) -> None:
    consts = header_constants()
    assert {"MAGIC", "OFF_CMD", "OFF_STATUS_NAME", "SOFF_ACK", "SOFF_EXIT_SEQ", "SOFF_TEXT",
            "SOFF_METRICS", "METRIC_COUNT", "SOFF_APP", "STATUS_SIZE", "ST_EXITED",
            "ENV_BLOCK"} <= consts.keys(), consts
    exe = compile_c(print_constants_program(consts), tmp_path)
    r = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30)
    in_c = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    in_python = {name: str(getattr(B, name, "missing from worker.block")) for name in consts}
    assert in_python == in_c
    # and nothing in worker.block looks like a layout constant that the header lacks
    extra = {
        n for n, v in vars(B).items()
        if LAYOUT_LIKE.fullmatch(n) and isinstance(v, int | str) and n not in consts
    }  # fmt: skip
    assert not extra, f"worker.block defines {sorted(extra)}, worker/ctlblock.h does not"
    assert B.MAGIC.to_bytes(8, "little") == b"PYSTCLB2"
    assert B.VERSION == 2


PUBLISH_PROGRAM = r"""
#include "worker/ctlblock.h"

int main(int argc, char **argv)
{
    struct pyvisor_block b;
    if (argc != 2 || pyvisor_attach(argv[1], &b) != 0) { perror("pyvisor_attach"); return 1; }
    char long_text[400];
    memset(long_text, 'x', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = 0;
    pyvisor_status(&b, long_text);              /* cut to PYVISOR_TEXT_SIZE bytes */
    pyvisor_status(&b, "loading model 3/5");
    uint64_t *jobs = pyvisor_counter(&b, "jobs");
    uint64_t *depth = pyvisor_gauge(&b, "queue_depth");
    pyvisor_counter_add(jobs, 40);
    pyvisor_counter_add(pyvisor_counter(&b, "jobs"), 2); /* found again, not a second slot */
    pyvisor_gauge_set(depth, 7);
    pyvisor_gauge_add(depth, -10);
    errno = 0;
    int null = pyvisor_counter(&b, "no-dash") == NULL;
    printf("bad_name=%d/%d\n", null, errno == EINVAL);
    errno = 0;
    null = pyvisor_gauge(&b, "jobs") == NULL;
    printf("other_kind=%d/%d\n", null, errno == EEXIST);
    char name[32];
    for (int i = 0; i < 14; i++) {
        snprintf(name, sizeof name, "m%d", i);
        pyvisor_counter_add(pyvisor_counter(&b, name), (uint64_t)i);
    }
    errno = 0;
    uint64_t *none = pyvisor_counter(&b, "one_too_many");
    printf("full=%d/%d\n", none == NULL, errno == ENOSPC);
    pyvisor_counter_add(none, 1); /* NULL-safe: nothing happens */
    pyvisor_gauge_set(NULL, 1);
    pyvisor_close(&b, 0);
    return 0;
}
"""


def test_c_worker_publishes_text_and_metrics(
    tmp_path: Path, new_block: Callable[..., ControlBlock]
) -> None:
    from worker.published import MetricValue

    exe = compile_c(PUBLISH_PROGRAM, tmp_path)
    blk = new_block("cpub:0")
    r = subprocess.run([str(exe), blk.name], check=False, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, f"C worker failed: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    assert r.stdout.splitlines() == ["bad_name=1/1", "other_kind=1/1", "full=1/1"]
    data = blk.worker_data()
    assert data is not None and data.text == "loading model 3/5" and data.bad_slots == 0
    assert data.metrics == (
        MetricValue("jobs", "counter", 42), MetricValue("queue_depth", "gauge", -3),
        *(MetricValue(f"m{i}", "counter", i) for i in range(14)),
    )
