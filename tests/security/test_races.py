"""No state lost in races (issue 10, item 8): requests that change state are refused once a
shutdown or a re-exec has begun; two configs cannot share a block prefix."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from tests.support.daemon import SUPERVISORD, DaemonFactory, pids_with_block_prefix
from tests.support.wait import wait_until

# ignores SIGTERM: a shutdown waits kill_timeout for it, which is the window we test in
STUBBORN = {"command": ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
            "start_seconds": 0.1, "kill_timeout": 3, "graceful_timeout": 0.1}


def raw(sock: Path, cmd: str, **fields: object) -> dict[str, object]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(str(sock))
        s.sendall((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    reply: dict[str, object] = json.loads(buf)
    return reply


def test_start_during_shutdown_is_refused(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({"w": STUBBORN}).start()
    d.wait_state("w:0", "RUNNING")
    assert raw(d.socket, "shutdown", opts={"wait": False})["code"] == 0
    reply = raw(d.socket, "start", targets=["w"])
    assert reply["code"] == 5, reply
    assert reply["err"] == "supervisord is shutting down; start refused\n"
    assert d.proc is not None
    assert d.proc.wait(timeout=30) == 0
    assert pids_with_block_prefix(d.prefix) == [], "a worker outlived the shutdown"


def test_start_during_reexec_is_refused(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({"w": {"command": "sleep 1000", "start_seconds": 0.1}}).start()
    pid = d.wait_state("w:0", "RUNNING")["pid"]
    assert d.ctl("stop", "w").returncode == 0
    mark = d.log_mark()
    assert raw(d.socket, "reexec")["code"] == 0
    reply = raw(d.socket, "start", targets=["w"])
    assert reply["code"] == 5 and "re-executing" in str(reply["err"]), reply
    d.wait_log(r"supervisord \d+ running", after=mark)
    row = d.wait_state("w:0", "STOPPED")
    assert row["pid"] is None and pid not in pids_with_block_prefix(d.prefix)


def test_second_config_with_the_same_block_prefix_is_refused(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    first = daemon_factory({"w": {"command": "sleep 1000", "start_seconds": 0.1}}).start()
    first.wait_state("w:0", "RUNNING")
    other = tmp_path / "other"
    other.mkdir()
    cfg = other / "b.yaml"
    cfg.write_text(f"supervisor: {{socket: {other / 's.sock'}, log_dir: {other / 'logs'}, "
                   f"block_prefix: {first.prefix}}}\nworkers: {{w: {{command: sleep 1000}}}}\n")
    r = subprocess.run([SUPERVISORD, "-c", str(cfg)], capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 1, r
    assert f"block_prefix {first.prefix!r} is in use by another supervisord" in r.stderr
    wait_until(lambda: first.status_of("w:0")["state"] == "RUNNING", 5, "first still running")
    assert len(pids_with_block_prefix(first.prefix)) == 1
