"""SO_PEERCRED checks: clients run as other uids/gids in forked children (needs root; CI is root).

The child chdirs into a 0711 directory while still root, drops its ids, then connects to the
relative path "ctl.sock", so it needs no access to pytest's 0700 tmp directories above.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import time
from pathlib import Path

import pytest

from supervisor.control.server import ControlServer
from tests.unit.test_server_harness import LoopThread, start_server

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run clients as other uids"),
]

NOBODY, NOGROUP, DAEMON_GID = 65534, 65534, 1
REQUEST = b'{"cmd": "echo"}\n'


@pytest.fixture
def pub(tmp_path: Path) -> Path:
    d = tmp_path / "pub"
    d.mkdir()
    d.chmod(0o711)
    return d


def request_as(cwd: Path, uid: int, gid: int, groups: list[int], timeout: float = 10.0) -> str:
    """Fork, become uid/gid/groups, send REQUEST to cwd/ctl.sock; return the reply (or error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.close(r)
            os.chdir(cwd)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5.0)
            s.connect("ctl.sock")
            s.sendall(REQUEST)
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
            os.write(w, buf)
            code = 0
        except BaseException as e:  # noqa: BLE001 -- reported through the pipe
            os.write(w, f"CHILD ERROR: {e!r}".encode())
        finally:
            os._exit(code)
    os.close(w)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _w, _x = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            out += chunk
    finally:
        os.close(r)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return out.decode()


def test_other_uid_is_refused(lt: LoopThread, pub: Path) -> None:
    _server, rec = start_server(lt, str(pub / "ctl.sock"), mode=0o666)
    reply = request_as(pub, NOBODY, NOGROUP, [])
    assert reply.startswith("{"), reply
    assert json.loads(reply) == {
        "code": 1,
        "out": "",
        "err": f"permission denied: uid {NOBODY} is not allowed on this socket\n",
        "data": None,
    }, reply
    assert rec.requests == []


def test_group_member_by_primary_gid_is_allowed(lt: LoopThread, pub: Path) -> None:
    _server, rec = start_server(lt, str(pub / "ctl.sock"), mode=0o660, group="nogroup")
    reply = request_as(pub, NOBODY, NOGROUP, [])
    assert json.loads(reply)["data"] == {"cmd": "echo"}, reply
    assert rec.requests == [{"cmd": "echo"}]


def test_group_member_by_supplementary_gid_is_allowed(lt: LoopThread, pub: Path) -> None:
    _server, _rec = start_server(lt, str(pub / "ctl.sock"), mode=0o660, group="nogroup")
    reply = request_as(pub, NOBODY, DAEMON_GID, [NOGROUP])
    assert json.loads(reply)["data"] == {"cmd": "echo"}, reply


def test_non_member_is_refused_even_with_group_configured(lt: LoopThread, pub: Path) -> None:
    _server, rec = start_server(lt, str(pub / "ctl.sock"), mode=0o666, group="nogroup")
    reply = request_as(pub, NOBODY, DAEMON_GID, [])
    assert (
        json.loads(reply)["err"]
        == f"permission denied: uid {NOBODY} is not allowed on this socket\n"
    )
    assert rec.requests == []


def test_mode_0600_keeps_others_out_at_the_file_level(lt: LoopThread, pub: Path) -> None:
    start_server(lt, str(pub / "ctl.sock"))
    reply = request_as(pub, NOBODY, NOGROUP, [])
    assert reply == "CHILD ERROR: PermissionError(13, 'Permission denied')", reply


def _silent_connections_as_nobody(lt: LoopThread, server: ControlServer, pub: Path) -> str:
    """5 silent connections from a child running as nobody: how many the server closed at
    once (or what went wrong in the child). The server holds at most 2 of them."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.chdir(pub)
            os.setgroups([])
            os.setgid(NOGROUP)
            os.setuid(NOBODY)
            socks = []
            for _ in range(5):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect("ctl.sock")
                socks.append(s)
            closed = 0
            for s in socks:
                s.settimeout(1.0)
                with contextlib.suppress(TimeoutError):
                    closed += s.recv(1) == b""
            os.write(w, str(closed).encode())
            code = 0
        except BaseException as e:  # noqa: BLE001 -- reported through the pipe
            os.write(w, f"CHILD ERROR: {e!r}".encode())
        finally:
            os._exit(code)
    os.close(w)
    try:
        ready, _w, _x = select.select([r], [], [], 10.0)
        out = os.read(r, 4096).decode() if ready else "no answer from the child"
        assert lt.call(lambda: server.connections) <= 2
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return out


def test_refused_peers_get_at_most_an_eighth_of_the_slots(lt: LoopThread, pub: Path) -> None:
    server, _rec = start_server(lt, str(pub / "ctl.sock"), mode=0o666, max_connections=16)
    out = _silent_connections_as_nobody(lt, server, pub)
    assert out == "3", out  # 16 // 8 = 2 refused peers are let in to read why; 3 closed at once


def test_a_group_member_gets_at_most_an_eighth_of_the_slots(lt: LoopThread, pub: Path) -> None:
    """A socket_group member may control the daemon but not lock root out: it holds at most
    max_connections // 8 connections (here 2), waiting or idle."""
    server, _rec = start_server(lt, str(pub / "ctl.sock"), mode=0o666, max_connections=16,
                                group=str(NOGROUP))
    out = _silent_connections_as_nobody(lt, server, pub)
    assert out == "3", out  # 2 of the member's 5 connections are kept, 3 closed at once
