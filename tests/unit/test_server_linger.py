"""A request over MAX_REQUEST on a real control socket: the client reads its error reply and
then a clean EOF, not ECONNRESET (the daemon closed with the rest of the request unread in its
receive buffer, which a Unix socket turns into a reset for the peer), and its sendall() of the
rest does not fail with EPIPE. What the daemon reads and waits for after its reply is bounded
(bytes, seconds, sockets at once): a client that keeps sending cannot hold it."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest

from supervisor.control import linger
from tests.unit.test_server_harness import (
    LoopThread,
    connect,
    roundtrip,
    start_server,
    wait_for,
)

TOO_LARGE = {"code": 2, "out": "", "data": None,
             "err": "supervisord: bad request: request too large (more than 65536 bytes)\n"}


def _send_then_read(sock_path: str, data: bytes) -> tuple[bytes, BaseException | None]:
    """sendall(data) in a thread (it blocks while the daemon is not reading), and read
    everything until EOF here, neither suppressing an error: (what was read, the send's
    error)."""
    sent: list[BaseException | None] = [None]
    with connect(sock_path) as s:
        def send() -> None:
            try:
                s.sendall(data)
            except OSError as e:
                sent[0] = e
        t = threading.Thread(target=send)
        t.start()
        buf = bytearray()
        while chunk := s.recv(1 << 20):        # ECONNRESET raises here
            buf += chunk
        t.join(10)
        assert not t.is_alive()
    return bytes(buf), sent[0]


@pytest.mark.parametrize("size", [70_000, 200_000, 900_000])
def test_an_oversized_request_gets_its_reply_and_a_clean_close(
        lt: LoopThread, sock_path: str, size: int) -> None:
    _server, rec = start_server(lt, sock_path)
    data = b'{"cmd": "echo", "pad": "' + b"x" * size + b'"}\n'
    raw, send_error = _send_then_read(sock_path, data)
    assert json.loads(raw) == TOO_LARGE
    assert send_error is None, f"the rest of the request could not be sent: {send_error!r}"
    assert rec.requests == []
    assert roundtrip(sock_path, b'{"cmd": "echo"}\n')["code"] == 0


def test_a_client_that_never_stops_sending_is_cut_off(lt: LoopThread, sock_path: str) -> None:
    """Past linger.MAX_BYTES after the reply the socket is closed (the client's send then fails,
    as it must): the drain is bounded, and others are served meanwhile."""
    server, _rec = start_server(lt, sock_path)
    with connect(sock_path) as s:
        s.settimeout(10)
        chunk = b"x" * 65536
        t0 = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() - t0 < 10:
                s.sendall(chunk)
                assert roundtrip(sock_path, b'{"cmd": "echo"}\n')["code"] == 0
    assert time.monotonic() - t0 < linger.SECONDS + 5
    wait_for(lambda: lt.call(lambda: server.lingering == 0), "the lingering socket closed")


def test_a_silent_client_after_its_reply_is_closed_at_the_deadline(
        lt: LoopThread, sock_path: str) -> None:
    """The client reads its reply and EOF but never closes: the daemon's socket goes within
    linger.SECONDS (not held until the client goes)."""
    server, _rec = start_server(lt, sock_path)
    with connect(sock_path) as s:
        s.sendall(b"y" * 300_000)
        buf = bytearray()
        while chunk := s.recv(1 << 20):
            buf += chunk
        assert json.loads(buf) == TOO_LARGE
        wait_for(lambda: lt.call(lambda: server.lingering == 0), "the lingering socket closed",
                 timeout=linger.SECONDS + 5)


def test_lingering_sockets_are_capped(lt: LoopThread, sock_path: str) -> None:
    """Many clients that send too much and never close: at most linger.MAX_SOCKETS are drained
    at once; beyond that a socket is closed at once (a reset for that client, as before)."""
    server, _rec = start_server(lt, sock_path)
    socks = []
    try:
        for _ in range(linger.MAX_SOCKETS + 8):
            s = connect(sock_path)
            socks.append(s)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.send(b"z" * 200_000)
        wait_for(lambda: lt.call(lambda: server.connections == 0), "every reply sent")
        assert lt.call(lambda: server.lingering) <= linger.MAX_SOCKETS
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: lt.call(lambda: server.lingering == 0), "the lingering sockets closed")
