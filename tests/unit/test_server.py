"""ControlServer over real Unix sockets, with the Loop running in a thread."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from supervisor.control.server import ServerError, SocketInUseError
from tests.unit.test_server_harness import (
    LoopThread,
    connect,
    read_all,
    readable,
    roundtrip,
    start_server,
    wait_for,
)


def line(doc: object) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def bad(message: str) -> dict[str, object]:
    return {"code": 2, "out": "", "err": f"supervisord: bad request: {message}\n", "data": None}


# -- the protocol ----------------------------------------------------------------------------------
def test_happy_path(lt: LoopThread, sock_path: str) -> None:
    _server, rec = start_server(lt, sock_path)
    req = {"cmd": "echo", "targets": ["web:0"], "opts": {"x": 1}}
    assert roundtrip(sock_path, line(req)) == {"code": 0, "out": "echo\n", "err": "", "data": req}
    assert rec.requests == [req]


def test_missing_reply_keys_are_filled_in(lt: LoopThread, sock_path: str) -> None:
    start_server(lt, sock_path, replies={"status": {"code": 4, "err": "no such worker: x\n"}})
    reply = roundtrip(sock_path, line({"cmd": "status"}))
    assert reply == {"code": 4, "out": "", "err": "no such worker: x\n", "data": None}


def test_deferred_reply_while_others_are_served(lt: LoopThread, sock_path: str) -> None:
    start_server(lt, sock_path)
    with connect(sock_path) as slow:
        slow.sendall(line({"cmd": "defer", "opts": {"delay": 0.3}}))
        assert roundtrip(sock_path, line({"cmd": "echo"}))["code"] == 0
        raw = read_all(slow)
    assert json.loads(raw) == {
        "code": 0,
        "out": "deferred\n",
        "err": "",
        "data": {"cmd": "defer", "opts": {"delay": 0.3}},
    }


def test_client_gone_before_deferred_reply(lt: LoopThread, sock_path: str) -> None:
    server, rec = start_server(lt, sock_path)
    with connect(sock_path) as s:
        s.sendall(line({"cmd": "hold"}))
        wait_for(lambda: rec.held, "the request to reach the handler")
    responder = rec.held[0]
    wait_for(lambda: responder.closed, "responder.closed after the client went away")
    lt.call(lambda: responder({"code": 0, "out": "too late\n"}))  # dropped silently
    assert wait_for(lambda: server.connections == 0 or None, "no connections") is True
    assert roundtrip(sock_path, line({"cmd": "echo"}))["out"] == "echo\n"


def test_half_closed_client_still_gets_its_reply(lt: LoopThread, sock_path: str) -> None:
    _server, rec = start_server(lt, sock_path)
    with connect(sock_path) as s:
        s.sendall(line({"cmd": "hold"}))
        s.shutdown(socket.SHUT_WR)
        wait_for(lambda: rec.held, "the request to reach the handler")
        responder = rec.held[0]
        assert not readable(s, 0.2), "the server closed a half-closed client"
        assert not responder.closed
        lt.call(lambda: responder({"code": 0, "out": "ok\n"}))
        assert json.loads(read_all(s)) == {"code": 0, "out": "ok\n", "err": "", "data": None}


def test_request_without_newline_then_eof_is_served(lt: LoopThread, sock_path: str) -> None:
    start_server(lt, sock_path)
    with connect(sock_path) as s:
        s.sendall(b'{"cmd": "echo"}')
        s.shutdown(socket.SHUT_WR)
        assert json.loads(read_all(s))["data"] == {"cmd": "echo"}


def test_second_reply_is_ignored(lt: LoopThread, sock_path: str) -> None:
    _server, rec = start_server(lt, sock_path)
    with connect(sock_path) as s:
        s.sendall(line({"cmd": "hold"}))
        wait_for(lambda: rec.held, "the request to reach the handler")
        lt.call(lambda: rec.held[0]({"code": 0, "out": "first\n"}))
        lt.call(lambda: rec.held[0]({"code": 1, "out": "second\n"}))
        assert read_all(s) == line({"code": 0, "out": "first\n", "err": "", "data": None})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b"{nope\n",
            (
                "request is not valid JSON (Expecting property name enclosed in double quotes: "
                "line 1 column 2 (char 1))"
            ),
        ),
        (b"[1, 2]\n", "request must be a JSON object (got list)"),
        (b'{"targets": []}\n', 'request has no "cmd" string'),
        (b'{"cmd": 3}\n', 'request has no "cmd" string'),
        (b"\xff\xfe\n", "request is not valid JSON ("),
    ],
)
def test_malformed_requests(lt: LoopThread, sock_path: str, data: bytes, message: str) -> None:
    _server, rec = start_server(lt, sock_path)
    reply = roundtrip(sock_path, data)
    if message.endswith("("):  # the decoder's wording for bad UTF-8 is CPython's business
        assert reply["code"] == 2 and reply["err"].startswith(
            f"supervisord: bad request: {message}"
        )
    else:
        assert reply == bad(message)
    assert rec.requests == []
    assert roundtrip(sock_path, line({"cmd": "echo"}))["code"] == 0


@pytest.mark.parametrize("newline", [False, True])
def test_oversized_request(lt: LoopThread, sock_path: str, newline: bool) -> None:
    _server, rec = start_server(lt, sock_path)
    data = b'{"cmd": "echo", "pad": "' + b"x" * 70_000 + b'"}' + (b"\n" if newline else b"")
    with connect(sock_path) as s:
        # the server may close before we finish: the reply is already ours
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        raw = read_all(s)
    assert json.loads(raw) == bad("request too large (more than 65536 bytes)")
    assert rec.requests == []


def test_handler_exception_becomes_code_1(lt: LoopThread, sock_path: str) -> None:
    logged: list[str] = []
    start_server(lt, sock_path, log=logged.append)
    assert roundtrip(sock_path, line({"cmd": "boom"})) == {
        "code": 1,
        "out": "",
        "err": "supervisord: internal error while handling 'boom': RuntimeError: boom "
        "(see the daemon log)\n",
        "data": None,
    }
    # the first line says what failed; the traceback follows, ending in the handler's raise
    assert len(logged) == 1
    first, *trace = logged[0].splitlines()
    assert first == "control socket: handler failed on 'boom': RuntimeError: boom"
    assert trace[0] == "Traceback (most recent call last):"
    assert 'raise RuntimeError("boom")' in trace[-2] and trace[-1] == "RuntimeError: boom"
    assert roundtrip(sock_path, line({"cmd": "echo"}))["code"] == 0


def test_unserializable_reply(lt: LoopThread, sock_path: str) -> None:
    start_server(lt, sock_path, replies={"status": {"code": 0, "data": {1, 2}}})
    reply = roundtrip(sock_path, line({"cmd": "status"}))
    assert reply == {
        "code": 1,
        "out": "",
        "err": "supervisord: internal error: reply not serializable "
        "(Object of type set is not JSON serializable)\n",
        "data": None,
    }


# -- slow, silent and too many clients -------------------------------------------------------------
def test_silent_client_dropped_after_timeout_others_served(lt: LoopThread, sock_path: str) -> None:
    server, _rec = start_server(lt, sock_path, read_timeout=1.5)
    with connect(sock_path) as silent:
        wait_for(lambda: server.connections == 1 or None, "the silent connection")
        t0 = time.monotonic()
        assert roundtrip(sock_path, line({"cmd": "echo"}))["code"] == 0
        assert time.monotonic() - t0 < 1.0, "a silent client delayed another"
        assert server.connections == 1, "the silent client was dropped too early"
        raw = read_all(silent, timeout=5.0)
    assert json.loads(raw) == bad("no complete request within 1.5 s")
    wait_for(lambda: server.connections == 0 or None, "the silent connection to be closed")


def test_partial_request_then_silence_is_dropped(lt: LoopThread, sock_path: str) -> None:
    start_server(lt, sock_path, read_timeout=0.3)
    with connect(sock_path) as s:
        s.sendall(b'{"cmd": "ec')
        assert json.loads(read_all(s, timeout=5.0)) == bad("no complete request within 0.3 s")


def test_slow_reader_does_not_block_others(lt: LoopThread, sock_path: str) -> None:
    server, _rec = start_server(lt, sock_path)
    size = 8 << 20  # far more than a socket buffer holds
    with connect(sock_path) as slow:
        slow.sendall(line({"cmd": "big", "opts": {"size": size}}))
        wait_for(lambda: server.connections == 1 or None, "the slow reader's connection")
        t0 = time.monotonic()
        for _ in range(3):
            assert roundtrip(sock_path, line({"cmd": "echo"}))["code"] == 0
        assert time.monotonic() - t0 < 2.0, "a slow reader delayed others"
        raw = read_all(slow)
    reply = json.loads(raw)
    assert (reply["code"], len(reply["out"])) == (0, size)


def test_reader_that_never_reads_is_dropped(lt: LoopThread, sock_path: str) -> None:
    server, _rec = start_server(lt, sock_path, write_timeout=0.3)
    with connect(sock_path) as stuck:
        stuck.sendall(line({"cmd": "big", "opts": {"size": 8 << 20}}))
        wait_for(lambda: server.connections == 0 or None, "the stuck reader to be dropped")


def test_eof_without_request_closes_quietly(lt: LoopThread, sock_path: str) -> None:
    server, rec = start_server(lt, sock_path)
    with connect(sock_path) as s:
        wait_for(lambda: server.connections == 1 or None, "the connection")
        s.shutdown(socket.SHUT_WR)
        assert read_all(s) == b""
    wait_for(lambda: server.connections == 0 or None, "the connection to be closed")
    assert rec.requests == []


def test_connection_cap(lt: LoopThread, sock_path: str) -> None:
    server, _rec = start_server(lt, sock_path, max_connections=2)
    with connect(sock_path) as a, connect(sock_path) as b:
        wait_for(lambda: server.connections == 2 or None, "two connections")
        with connect(sock_path) as c:
            assert read_all(c) == b"", "a connection beyond the cap was not closed at once"
        a.sendall(line({"cmd": "echo"}))
        b.sendall(line({"cmd": "echo"}))
        assert json.loads(read_all(a))["code"] == json.loads(read_all(b))["code"] == 0


# -- the socket file -------------------------------------------------------------------------------
def test_socket_mode_0600_and_parent_created_0700(lt: LoopThread, tmp_path: Path) -> None:
    path = tmp_path / "run" / "sub" / "ctl.sock"
    start_server(lt, str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert os.umask(0o022) == 0o022, "the umask was not restored"


def test_socket_group_mode(lt: LoopThread, sock_path: str) -> None:
    start_server(lt, sock_path, mode=0o660, group="nogroup")
    st = os.stat(sock_path)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, 65534)


def test_unknown_group(lt: LoopThread, sock_path: str) -> None:
    with pytest.raises(ServerError, match="control socket group 'no-such-group-x' does not exist"):
        start_server(lt, sock_path, group="no-such-group-x")


def test_stale_socket_file_is_replaced(lt: LoopThread, sock_path: str) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves
    os.chmod(sock_path, 0o755)
    start_server(lt, sock_path)
    assert roundtrip(sock_path, line({"cmd": "echo"}))["code"] == 0
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600, "the stale file was not replaced"


def test_live_socket_is_not_replaced(lt: LoopThread, sock_path: str) -> None:
    start_server(lt, sock_path)
    ino = os.stat(sock_path).st_ino
    with pytest.raises(SocketInUseError) as info:
        start_server(lt, sock_path)
    assert str(info.value) == (
        f"{sock_path}: another process already answers on this control socket "
        "(is another supervisord running with this config?)"
    )
    assert os.stat(sock_path).st_ino == ino
    assert roundtrip(sock_path, line({"cmd": "echo"}))["code"] == 0


def test_regular_file_is_not_replaced(lt: LoopThread, sock_path: str) -> None:
    Path(sock_path).write_text("precious")
    with pytest.raises(ServerError, match="exists and is not a socket; refusing to replace it"):
        start_server(lt, sock_path)
    assert Path(sock_path).read_text() == "precious"


def test_path_too_long(lt: LoopThread, tmp_path: Path) -> None:
    path = str(tmp_path / ("x" * 120))
    with pytest.raises(ServerError, match=r"control socket path is too long \(\d+ bytes"):
        start_server(lt, path)


def test_close_unlinks_only_its_own_file(lt: LoopThread, sock_path: str, tmp_path: Path) -> None:
    server, _rec = start_server(lt, sock_path)
    lt.call(server.close)
    assert not os.path.exists(sock_path)

    other = str(tmp_path / "other.sock")
    server, _rec = start_server(lt, other)
    os.unlink(other)
    newcomer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        newcomer.bind(other)  # someone else's socket now lives at the path
        lt.call(server.close)
        assert os.path.exists(other), "close() removed a socket file that was not its own"
    finally:
        newcomer.close()


def test_close_drops_waiting_clients(lt: LoopThread, sock_path: str) -> None:
    server, rec = start_server(lt, sock_path)
    with connect(sock_path) as s:
        s.sendall(line({"cmd": "hold"}))
        wait_for(lambda: rec.held, "the request to reach the handler")
        lt.call(server.close)
        assert rec.held[0].closed
        assert read_all(s) == b""
