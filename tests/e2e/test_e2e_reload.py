"""reload: added, removed, changed and invalid configs, without restarting the daemon."""

from __future__ import annotations

from typing import Any

from tests.support.daemon import StartedDaemon, pid_alive

QUICK: dict[str, Any] = {"start_seconds": 0.2, "graceful_timeout": 0.5, "kill_timeout": 0.5}


def sleeper(seconds: int, **kw: Any) -> dict[str, Any]:
    return {"command": f"sleep {seconds}", **QUICK, **kw}


def test_reload_added_removed_changed(daemon: StartedDaemon) -> None:
    d = daemon({"keep": sleeper(1000), "gone": sleeper(1000), "change": sleeper(1000)})
    for name in ("keep:0", "gone:0", "change:0"):
        d.wait_state(name, "RUNNING")
    before = d.pids()

    d.write_config({"keep": sleeper(1000), "change": sleeper(2000), "new": sleeper(1000)})
    r = d.ctl("reload")
    assert (r.returncode, r.stdout, r.stderr) == (
        0, ("removed gone (1 instance)\nchanged change: restarted 1 instance\n"
           "added new (1 instance)\n"), ""), r
    rows = {row["name"]: row for row in d.status_json()}
    assert sorted(rows) == ["change:0", "keep:0", "new:0"], rows
    assert all(row["state"] == "RUNNING" for row in rows.values()), rows
    assert rows["keep:0"]["pid"] == before["keep:0"], "an unchanged worker was restarted"
    assert rows["change:0"]["pid"] != before["change:0"]
    assert not pid_alive(before["gone:0"]) and not pid_alive(before["change:0"])
    with open(f"/proc/{rows['change:0']['pid']}/cmdline", "rb") as f:
        assert f.read() == b"sleep\x002000\x00"

    d.write_config({"keep": sleeper(1000, numprocs=2), "change": sleeper(2000),
                    "new": sleeper(1000)})
    r = d.ctl("reload")
    assert (r.returncode, r.stdout, r.stderr) == (0, "keep: numprocs 1 -> 2\n", ""), r
    after = d.pids()
    assert after["keep:0"] == before["keep:0"] and "keep:1" in after, after

    r = d.ctl("reload")
    assert (r.returncode, r.stdout, r.stderr) == (0, "no changes\n", ""), r
    assert d.pids() == after

    # a stopped instance is not restarted, and reload does not say it was
    assert d.ctl("stop", "keep:1").returncode == 0
    d.write_config({"keep": sleeper(3000, numprocs=2), "change": sleeper(2000),
                    "new": sleeper(1000)})
    r = d.ctl("reload")
    assert (r.returncode, r.stdout, r.stderr) == (0, (
        "changed keep: restarted 1 instance; 1 instance stopped, left stopped with the new "
        "config (keep:1)\n"), ""), r
    assert d.status_of("keep:1")["state"] == "STOPPED"


def test_reload_invalid_keeps_old_workers(daemon: StartedDaemon) -> None:
    d = daemon({"a": sleeper(1000, numprocs=2), "b": sleeper(1000)})
    d.wait_state("a:1", "RUNNING")
    d.wait_state("b:0", "RUNNING")
    before = d.pids()
    cfg = d.config_path
    good = cfg.read_text()
    bad = good.replace("    numprocs: 2\n", "    numprocs: 2\n    start_secs: 1\n", 1)
    assert bad != good
    line = bad.splitlines().index("    start_secs: 1") + 1
    d.write_config({}, raw=bad)
    mark = d.log_mark()
    r = d.ctl("reload")
    assert (r.returncode, r.stdout, r.stderr) == (
        7, "", ("reload refused; still running the previous config.\n"
                f"{cfg}:{line}: workers.a.start_secs: unknown key; did you mean "
                "'start_seconds'?\n")), r
    d.wait_log(r"reload refused, still running the previous config:", after=mark)
    assert d.pids() == before
    assert all(pid_alive(p) for p in before.values())

    d.write_config({}, raw="workers:\n  a:\n    command: sleep 1000\n    numprocs: -1\n")
    r = d.ctl("reload")
    assert r.returncode == 7 and r.stdout == "" and f"{cfg}:4: workers.a.numprocs:" in r.stderr, r
    assert d.pids() == before

    d.write_config({}, raw=good)          # fixed: reload is a no-op
    r = d.ctl("reload")
    assert (r.returncode, r.stdout, r.stderr) == (0, "no changes\n", ""), r
    assert d.pids() == before


def test_reload_names_the_supervisor_settings_that_changed_and_when_they_apply(
        daemon: StartedDaemon) -> None:
    # Any change of the supervisor: section said "socket, block_prefix and log_dir take effect
    # at the next start", whatever changed: log_dir does take effect (the workers' log paths
    # move and they are restarted), log_level does not and was "no changes".
    d = daemon({"a": sleeper(1000)})
    d.wait_state("a:0", "RUNNING")
    d.supervisor_extra = {"shutdown_timeout": 30, "log_level": "DEBUG"}
    d.write_config({"a": sleeper(1000)})
    r = d.ctl("reload")
    assert (r.returncode, r.stdout, r.stderr) == (0, (
        "supervisor: shutdown_timeout changed, in effect now\n"
        "supervisor: log_level changed; takes effect at the next start of supervisord (this "
        "one keeps the old value)\n"), ""), r
    d.supervisor_extra["log_dir"] = str(d.dir / "logs2")
    d.write_config({"a": sleeper(1000)})
    r = d.ctl("reload")
    assert (r.returncode, r.stdout, r.stderr) == (0, (
        "changed a: restarted 1 instance\nsupervisor: log_dir changed, in effect now\n"), ""), r
    d.wait_state("a:0", "RUNNING")
    assert (d.dir / "logs2" / "a-0.out.log").exists()


def test_a_reload_that_changes_block_prefix_keeps_the_old_one_until_the_next_start(
        daemon: StartedDaemon) -> None:
    """The daemon holds the lock of its block prefix and a crash's successor scans under it:
    a worker spawned after a reload to another prefix must still get its block under the old
    one, as the reload says (new spawns took the new prefix at once, unlocked, and another
    daemon of that prefix would have adopted them)."""
    import os
    import uuid

    d = daemon({"a": sleeper(1000)})
    d.wait_state("a:0", "RUNNING")
    other = "t" + uuid.uuid4().hex[:8]
    d.supervisor_extra = {"block_prefix": other}
    d.write_config({"a": sleeper(1000), "b": sleeper(1000)})
    try:
        r = d.ctl("reload")
        assert (r.returncode, r.stderr) == (0, ""), r
        assert ("supervisor: block_prefix changed; takes effect at the next start of "
                "supervisord") in r.stdout, r
        d.wait_state("b:0", "RUNNING")
        shm = os.listdir("/dev/shm")
        assert f"{d.prefix}.b:0" in shm
        assert not [n for n in shm if n.startswith(other + ".")], shm
    finally:
        for n in os.listdir("/dev/shm"):
            if n.startswith(other + "."):
                os.unlink(f"/dev/shm/{n}")


def test_the_daemon_answers_while_a_reload_loads_a_large_config(daemon: StartedDaemon) -> None:
    """A reload loads the file on a thread of its own: a config of 5,000 workers takes about a
    second to load here, and `pid` requests sent meanwhile are answered before the reload is
    (on the loop, none was: the loop read no socket until the load was done)."""
    import json
    import socket
    import time

    def ask(s: socket.socket, cmd: str) -> None:
        s.sendall(json.dumps({"cmd": cmd, "targets": [], "opts": {}}).encode() + b"\n")

    many = {f"app-{i}": {**sleeper(1000), "autostart": False, "directory": "/tmp",
                         "environment": {"APP_INDEX": str(i)}} for i in range(5000)}
    d = daemon({"w": sleeper(1000), **many})
    d.wait_state("w:0", "RUNNING", timeout=60)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as rl:
        rl.connect(str(d.socket))
        rl.settimeout(120)
        ask(rl, "reload")
        answered = 0
        end = time.monotonic() + 120
        while time.monotonic() < end:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as p:
                p.settimeout(120)
                p.connect(str(d.socket))
                ask(p, "pid")
                assert p.recv(65536).startswith(b"{"), "no pid reply"
            rl.setblocking(False)
            try:
                reply = rl.recv(65536)
                break
            except BlockingIOError:
                answered += 1
            finally:
                rl.settimeout(120)
        assert b"no changes" in reply, reply
    assert answered >= 3, f"only {answered} pid requests answered during the reload"


def test_a_reload_still_loading_when_the_daemon_re_executes_is_answered(
        daemon: StartedDaemon) -> None:
    """The load runs on a thread; a reexec asked meanwhile execs before it is applied: the
    reload's client got EOF, no reply."""
    import json
    import socket

    def ask(cmd: str) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(str(d.socket))
        s.sendall(json.dumps({"cmd": cmd, "targets": [], "opts": {}}).encode() + b"\n")
        return s

    def read_all(s: socket.socket) -> bytes:
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out

    many = {f"app-{i}": {**sleeper(1000), "autostart": False} for i in range(3000)}
    d = daemon({"w": sleeper(1000), **many})
    d.wait_state("w:0", "RUNNING", timeout=60)
    with ask("reload") as rl:
        with ask("reexec") as rx:
            assert b"re-executing" in read_all(rx)
        reply = read_all(rl)
    assert b"re-executing; reload refused" in reply, reply    # (its load takes ~1 s)
    d.wait_log(r"1 adopted", timeout=30)
