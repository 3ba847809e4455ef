"""A worker written in C against worker/ctlblock.h, under a real daemon: readiness reported
with pyvisor_ready() (not start_seconds) and a graceful stop through the control word."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import StartedDaemon, pid_alive

ROOT = Path(__file__).resolve().parents[2]

C_WORKER = r"""
#include "ctlblock.h"

int main(void)
{
    struct pyvisor_block b;
    if (pyvisor_attach(getenv("PYVISOR_BLOCK"), &b) != 0) { perror("pyvisor_attach"); return 1; }
    pyvisor_ready(&b);
    while (!pyvisor_wait_for_stop(&b))
        ;
    puts("stop seen");
    fflush(stdout);
    pyvisor_close(&b, 0);
    return 0;
}
"""


@pytest.fixture
def c_worker(tmp_path: Path) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the C worker")
    src = tmp_path / "cworker.c"
    src.write_text(C_WORKER)
    exe = tmp_path / "cworker"
    subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror",
                    f"-I{ROOT / 'worker'}", "-o", str(exe), str(src)], check=True, timeout=60)
    return str(exe)


def test_c_worker_ready_and_graceful_stop(daemon: StartedDaemon, c_worker: str) -> None:
    # start_seconds 60: RUNNING within the wait below can only come from the ready report
    d = daemon({"c": {"command": [c_worker], "start_seconds": 60, "graceful_timeout": 10,
                      "kill_timeout": 1}})
    d.wait_state("c:0", "RUNNING", timeout=15)
    d.wait_log(r"c:0 STARTING -> RUNNING \(ready after \d+\.\d\d s\)$")
    pid = d.pids()["c:0"]
    mark = d.log_mark()
    r = d.ctl("stop", "--graceful", "c:0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "c:0: stopped\n", ""), r
    assert not pid_alive(pid)
    d.wait_log(r"c:0 STOPPING -> STOPPED \(exited: exit status 0\)$", after=mark)
    assert "signal" not in d.log_text()[mark:], d.log_text()[mark:]
    assert (d.log_dir / "c-0.out.log").read_text() == "stop seen\n"
