"""Red-team findings against the HTTP endpoint and the event stream: each test is one attack
that worked before its fix (see the commit that added it)."""

from __future__ import annotations

import socket
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.control.handlers import Handlers
from supervisor.control.server import ControlServer
from supervisor.runtime.events import EventBus
from tests.support.daemon import DaemonFactory, DaemonProcess
from tests.support.http import free_port, request
from tests.unit.test_server_harness import LoopThread, connect, wait_for


def _connect_when_accepted(path: str) -> socket.socket:
    """connect() to a Unix socket whose backlog may be full for a moment (the loop accepts)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return connect(path)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            wait_for(lambda: True, "a turn")


def test_a_follower_that_hangs_up_at_once_is_unsubscribed(lt: LoopThread, tmp_path: Path) -> None:
    """`events --follow` sent and the socket closed before the past events are written: the
    first write fails (EPIPE) and closes the stream while the handler still sends the past;
    it then subscribed the closed stream to the bus for good (one subscriber leaked per
    connection, each called on every event for the daemon's life)."""
    bus = EventBus()
    for _ in range(20):      # a past to send: the write that finds the peer gone
        bus.publish("w:0", "state", from_state="STOPPED", to_state="STARTING")
    rt = types.SimpleNamespace(events=bus, select=lambda targets: ([], []), instances={})
    handlers = Handlers(types.SimpleNamespace(runtime=rt, leaving=""))
    path = str(tmp_path / "ctl.sock")
    server = lt.call(lambda: ControlServer(lt.loop, path, handlers))
    lt.servers.append(server)
    for _ in range(50):
        s = _connect_when_accepted(path)
        s.sendall(b'{"cmd": "events", "targets": ["all"], "opts": {"follow": true}}\n')
        s.close()
    wait_for(lambda: lt.call(lambda: not server._conns), "every connection closed")
    assert lt.call(lambda: bus.subscribers) == 0


@pytest.fixture
def served(daemon_factory: DaemonFactory) -> Iterator[tuple[DaemonProcess, int]]:
    port = free_port()
    d = daemon_factory({"plain": {"command": "sleep 100000", "numprocs": 3,
                                  "start_seconds": 0.2, "kill_timeout": 2}},
                       supervisor={"http": f"127.0.0.1:{port}"}).start()
    d.wait_state("plain:2", "RUNNING")
    yield d, port


def test_a_group_target_is_a_full_status_and_is_rendered_once_a_second(
        served: tuple[DaemonProcess, int]) -> None:
    """GET /api/v1/instances/all (or a worker's name) is the full status by another path,
    and needs no token: it read every instance's /proc and cgroup files on each request, so
    any local user could pipeline them (64 connections x 100 requests) and stall the loop
    (`supervisorctl status` took ~18 s instead of 0.5 s at 300 instances). Now it is rendered
    at most once a second per target, like /api/v1/status."""
    _d, port = served
    for target in ("all", "plain"):
        first, second = (request(port, "GET", f"/api/v1/instances/{target}") for _ in range(2))
        assert first.status == 200 and len(first.json()["data"]) == 3, first
        assert first.body == second.body, "the same rows within a second (uptimes and all)"
    one = request(port, "GET", "/api/v1/instances/plain:1")
    assert one.status == 200 and [r["name"] for r in one.json()["data"]] == ["plain:1"]
    assert request(port, "GET", "/api/v1/instances/nope").status == 404


def test_a_render_slower_than_a_second_is_reused_for_four_times_as_long() -> None:
    """A render that takes longer than RENDER_EVERY (thousands of instances) was redone on
    the next scrape, so a scraper in a loop kept the daemon's loop rendering all the time;
    now renders take at most a fifth of the loop."""
    from supervisor.http.exchange import Exchange
    from supervisor.http.routes import Routes

    clock = [100.0]
    renders: list[float] = []

    def render() -> bytes:
        renders.append(clock[0])
        clock[0] += 2.0            # a slow render
        return b"text\n"

    rt = types.SimpleNamespace(now=lambda: clock[0])
    routes = Routes(types.SimpleNamespace(runtime=rt), None,   # type: ignore[arg-type]
                    None, render, None)
    sent: list[bytes] = []
    conn = types.SimpleNamespace(closed=False, respond=lambda ex, st, hs, body: sent.append(body))

    def scrape(at: float) -> None:
        clock[0] = at
        routes.metrics(Exchange(conn, "GET", "/metrics", {}, {}, b""))   # type: ignore[arg-type]

    scrape(100.0)                  # renders 100 .. 102
    for at in (102.5, 105.0, 109.9):
        scrape(at)
    assert renders == [100.0]
    scrape(110.0)
    assert renders == [100.0, 110.0] and sent == [b"text\n"] * 5


def _exchange(port: int, data: bytes, send_for: float = 0.0, more: bytes = b"") -> tuple[
        bytes, int]:
    """Send data, then ``more`` over and over for up to send_for seconds (until the server
    stops taking it); (everything the server answered, the bytes it took)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        sent = len(data)
        deadline = time.monotonic() + send_for
        try:
            while more and time.monotonic() < deadline:
                s.sendall(more)
                sent += len(more)
        except OSError:      # the server answered and closed
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
    return out, sent


def test_content_length_with_transfer_encoding_is_refused(
        served: tuple[DaemonProcess, int]) -> None:
    """Both framings in one request: h11 reads the chunks, a proxy in front (SECURITY.md
    suggests one) may read the Content-Length; the second request hidden in the body was
    served (request smuggling). Now 400 and the connection closes."""
    _d, port = served
    out, _ = _exchange(port, b"POST /api/v1/instances/plain/stop HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                             b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:300]
    assert b"Content-Length and Transfer-Encoding" in out and b"ok: the loop turns" not in out


def test_chunk_framing_counts_against_the_request(served: tuple[DaemonProcess, int]) -> None:
    """1-byte chunks with 15 KB of chunk extension each: the body cap (64 KiB) counted only
    the data, so one request made the daemon parse ~1 GB (measured: 986 MB in 7.7 s) before
    its 413. Now the bytes received for a request, framing included, are capped too."""
    _d, port = served
    out, sent = _exchange(port, b"POST /api/v1/instances/plain/stop HTTP/1.1\r\nHost: "
                                b"localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
                          send_for=8.0, more=(b"1;" + b"e" * 15000 + b"\r\nx\r\n") * 4)
    assert out.startswith(b"HTTP/1.1 413 "), out[:300]
    assert sent < 32 << 20, f"the server took {sent} bytes of one request"
    # a chunked body of ordinary chunks still goes through
    body = b"".join(b"1000\r\n" + b"y" * 0x1000 + b"\r\n" for _ in range(15)) + b"0\r\n\r\n"
    out, _ = _exchange(port, b"POST /api/v1/instances/plain/stop HTTP/1.1\r\nHost: localhost\r\n"
                             b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body)
    assert out.startswith(b"HTTP/1.1 403 "), out[:300]     # no token file: refused, but read


@pytest.mark.parametrize("size", [100_000, 900_000])
def test_a_body_too_large_gets_its_413_and_a_clean_close(
        served: tuple[DaemonProcess, int], size: int) -> None:
    """A client that sends its whole too-large body and then reads: the server closed with
    the body unread in its receive buffer, and the kernel answered with a reset, so the client
    read ECONNRESET (or got EPIPE in sendall) instead of its 413. The connection lingers now
    (control.linger), as the control socket's does."""
    _d, port = served
    head = (f"POST /api/v1/instances/plain/stop HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head + b"x" * size)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 413 "), out[:300]
