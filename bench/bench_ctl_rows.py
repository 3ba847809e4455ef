"""Bench: supervisorctl's own cost -- start-up, and reading, decoding and printing N status rows.

No real daemon: a stand-in serves canned replies on a Unix socket (made once, the way the
daemon makes them: protocol.reply_pieces with rows of instance_facts' shape, the text rendered
by handlers.render_status_line), found through a real locator for a temporary config. So the
figures are the CLI's alone, with the daemon's part ~0 (bench_scale measures the whole).

Variants, interleaved run for run, each --runs times per form (``pid``, ``status``, ``status
--json``), beside ``python -I -S -c pass`` and ``python -c pass`` (interleaved with them too):

  base     another checkout's entry point (--base DIR), ``python -c "...main()"``, PYTHONPATH=DIR
  tree     this tree's, the same way
  script   this tree's console script (.venv/bin/supervisorctl), as a user runs it

stdout is a pipe the bench drains (``supervisorctl status | less``). Printed per variant: wall
time median / p90 / min and the child's CPU time (user+sys, from wait4) median, in ms.

    .venv/bin/python bench/bench_ctl_rows.py --rows 1000,10000 --base DIR
    # DIR: e.g. mkdir DIR && git archive 34ba4a0 supervisor | tar -x -C DIR
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import REPO, median, pct, say

from supervisor import paths
from supervisor.control.handlers import render_status_line
from supervisor.control.protocol import OK, decode_request, reply_pieces

RUNNER = ("import sys; sys.argv[0] = 'supervisorctl'; "
          "from supervisor.ctl.main import main; main()")
PIECE = 250


def fake_rows(n: int) -> list[dict[str, Any]]:
    """Rows of instance_facts' shape: RUNNING plain workers with CPU and memory."""
    return [{
        "name": f"plain:{i}", "worker": "plain", "state": "RUNNING", "pid": 100000 + i,
        "uptime": 1234.5 + i, "heartbeat_age": None, "work_done": None, "cpu_seconds": 0.01,
        "rss": 1032192, "last_exit": None, "fatal_reason": None, "adopted": False,
        "processes": 1, "oom_kills": 0, "cgroup": f"/sys/fs/cgroup/pyvisor/plain-{i}",
        "last_output": None, "last_output_file": None, "restarts": 0, "next_try": None,
        "note": None, "status_text": None, "metrics": [],
    } for i in range(n)]


def replies(n: int) -> dict[str, bytes]:
    """The reply lines of status (text), status --json and pid, as the daemon sends them."""
    rows = fake_rows(n)
    batches = [rows[k:k + PIECE] for k in range(0, n, PIECE)]
    width = max(len(r["name"]) for r in rows)
    text = ("".join(render_status_line(f, width) + "\n" for f in b) for b in batches)
    return {
        "status": b"".join(reply_pieces(OK, text)),
        "status --json": b"".join(reply_pieces(OK, (), iter(batches))),
        "pid": b"".join(reply_pieces(OK, [f"{os.getpid()}\n"])),
    }


def serve(listener: socket.socket, lines: dict[str, bytes]) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            buf = b""
            while b"\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
            req = decode_request(buf.split(b"\n", 1)[0])
            key = "status --json" if req.cmd == "status" and req.flag("json", False) else req.cmd
            with contextlib.suppress(OSError):     # the CLI went away
                conn.sendall(lines[key])


def once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall ms, CPU ms (user+sys of the child) and exit status of one run; stdout drained."""
    r, w = os.pipe()
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.DEVNULL,
                         env=env)
    os.close(w)
    while os.read(r, 1 << 20):
        pass
    os.close(r)
    _pid, status, ru = os.wait4(p.pid, 0)
    p.returncode = status       # reaped here: keep Popen from waiting again
    return ((time.monotonic() - t0) * 1000, (ru.ru_utime + ru.ru_stime) * 1000,
            os.waitstatus_to_exitcode(status))


def line(name: str, wall: list[float], cpu: list[float], codes: set[int]) -> None:
    say(f"  {name:<26s} wall median {median(wall):6.1f}  p90 {pct(wall, 90):6.1f}  "
        f"min {min(wall):6.1f}   cpu median {median(cpu):6.1f} ms  (n={len(wall)}, "
        f"exit {sorted(codes)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1000,10000", help="status rows, comma-separated")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--base", type=Path, help="a checkout of the code to compare with")
    a = ap.parse_args()
    py = sys.executable
    script = str(Path(py).with_name("supervisorctl"))
    say(f"supervisorctl's own cost, canned replies; load {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="pvb-ctlrows-") as tmp:
        config = os.path.join(tmp, "supervisord.yaml")
        Path(config).write_text("# a stand-in: the CLI never reads it\n")
        sock_path = os.path.join(tmp, "ctl.sock")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        variants: dict[str, tuple[list[str], dict[str, str]]] = {}
        if a.base is not None:
            variants["base"] = ([py, "-c", RUNNER], {**env, "PYTHONPATH": str(a.base)})
        variants["tree"] = ([py, "-c", RUNNER], {**env, "PYTHONPATH": str(REPO)})
        variants["script"] = ([script], env)
        bare = {"python -I -S -c pass": [py, "-I", "-S", "-c", "pass"],
                "python -c pass": [py, "-c", "pass"]}
        for _argv, venv in variants.values():   # byte-compiled, as an installed package is
            subprocess.run([py, "-m", "compileall", "-q", "supervisor"], check=True,
                           cwd=venv.get("PYTHONPATH", REPO), env=env)
        paths.write_locator(config, sock_path, os.getpid())
        try:
            for n in (int(x) for x in a.rows.split(",")):
                lines = replies(n)
                say(f"N={n} rows: reply of status {len(lines['status']) / 1e6:.2f} MB, "
                    f"--json {len(lines['status --json']) / 1e6:.2f} MB")
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(sock_path)
                listener.listen(16)
                th = threading.Thread(target=serve, args=(listener, lines), daemon=True)
                th.start()
                try:
                    for form in (["pid"], ["status"], ["status", "--json"]):
                        runs: dict[str, tuple[list[float], list[float], set[int]]] = {}
                        todo = {**{k: (v, env) for k, v in bare.items()},   # interleaved too
                                **{k: (vargv + ["-c", config, *form], venv)
                                   for k, (vargv, venv) in variants.items()}}
                        for _ in range(a.runs):
                            for k, (argv, e) in todo.items():
                                took, cpu_ms, code = once(argv, e)
                                got = runs.setdefault(k, ([], [], set()))
                                got[0].append(took)
                                got[1].append(cpu_ms)
                                got[2].add(code)
                        say(f" supervisorctl {' '.join(form)}")
                        for k, (wall, cpu, codes) in runs.items():
                            line(k, wall, cpu, codes)
                finally:
                    listener.close()
                    os.unlink(sock_path)
        finally:
            paths.remove_locator(config, os.getpid())
    say(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
