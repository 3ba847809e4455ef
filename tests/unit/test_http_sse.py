"""The HTTP event stream's bounds with a real server, loop, event bus and sockets in this
process: a client that falls behind its per-client cap loses events and is told how many (the
``lost`` marker before the next event that fits), its waiting bytes never pass the cap, and
the keepalive comment comes only while a client is connected (no timer is left without one).
The runtime is reduced to what the route uses: the loop, the bus and target lookup."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterable, Iterator

from supervisor.http.address import parse_address
from supervisor.http.exchange import Router
from supervisor.http.server import HttpServer
from supervisor.http.sse import EventStreams
from supervisor.loop import Loop
from supervisor.runtime.events import EventBus
from tests.support.http import free_port


class _Runtime:
    def __init__(self) -> None:
        self.loop = Loop()
        self.events = EventBus()

    def select(self, targets: Iterable[str]) -> tuple[list[object], list[str]]:
        return [], []             # every target is known


@contextlib.contextmanager
def served(cap: int, keepalive: float) -> Iterator[tuple[_Runtime, EventStreams, int]]:
    rt = _Runtime()
    streams = EventStreams(rt, cap=cap, keepalive=keepalive)  # type: ignore[arg-type]
    router = Router()
    router.add("GET", "/api/v1/events", streams.route)
    port = free_port()
    server = HttpServer(rt.loop, parse_address(f"127.0.0.1:{port}"), router, write_timeout=60)
    try:
        yield rt, streams, port
    finally:
        server.close()
        rt.loop.close()


def turn(loop: Loop) -> None:
    """One turn of the loop, never longer than 20 ms (and no timer of its own left)."""
    t = loop.call_later(0.02, lambda: None)
    loop.run_once()
    t.cancel()


def pump(loop: Loop, c: socket.socket, until: bytes, timeout: float = 20.0) -> bytes:
    """Turn the loop and read c until ``until`` arrived; everything read."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while until not in got:
        assert time.monotonic() < deadline, f"no {until!r} in {bytes(got[-500:])!r}"
        turn(loop)
        with contextlib.suppress(BlockingIOError):
            got += c.recv(1 << 20)
    return bytes(got)


def connect(port: int, rt: _Runtime, streams: EventStreams) -> socket.socket:
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.connect(("127.0.0.1", port))
    c.setblocking(False)
    c.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
    deadline = time.monotonic() + 10
    while not streams.open:
        assert time.monotonic() < deadline, "the stream did not open"
        turn(rt.loop)
    return c


def test_a_client_behind_its_cap_loses_events_and_is_told() -> None:
    cap = 4096
    with served(cap, keepalive=60) as (rt, streams, port):
        c = connect(port, rt, streams)
        try:
            pump(rt.loop, c, b"event: hello")
            burst = 2000               # ~440 KB: far past the kernel's buffers and the cap
            for i in range(burst):
                rt.events.publish(f"w:{i % 7}", "state", from_state="STOPPED",
                                  to_state="STARTING", reason="start requested")
            (client,) = streams.open
            assert client.stream.pending <= cap
            assert client.lost > 0
            # drain what was sent, then one more event: the marker comes before it
            got = b""
            idle = time.monotonic() + 0.5
            while time.monotonic() < idle:
                turn(rt.loop)
                with contextlib.suppress(BlockingIOError):
                    if chunk := c.recv(1 << 20):
                        got += chunk
                        idle = time.monotonic() + 0.5
            last = rt.events.publish("w:0", "exit", pid=1, reason="exit status 0")
            got += pump(rt.loop, c, b"id: %d-%d\n" % (rt.events.epoch, last.seq))
        finally:
            c.close()
    epoch = rt.events.epoch
    ids = [int(x) for x in re.findall(rb"\nid: %d-(\d+)\n" % epoch, got)]
    lost = [int(x) for x in re.findall(rb'event: lost\ndata: \{"lost": (\d+)', got)]
    assert len(lost) == 1 and lost[0] > 0, lost
    assert ids == list(range(1, len(ids))) + [last.seq], "in order, none repeated"
    assert len(ids) - 1 + lost[0] == burst, (len(ids), lost)
    marker = got.index(b"event: lost")
    assert got.index(b"id: %d-%d\n" % (epoch, last.seq)) > marker > got.index(
        b"id: %d-%d\n" % (epoch, len(ids) - 1))
    assert b"events lost (this client did not keep up)" in got


def test_keepalive_only_while_a_client_is_connected() -> None:
    with served(64 * 1024, keepalive=0.2) as (rt, streams, port):
        assert rt.loop._next_timeout() is None, "an idle server has no timer"
        c = connect(port, rt, streams)
        try:
            got = pump(rt.loop, c, b"event: hello")
            t0 = time.monotonic()
            got += pump(rt.loop, c, b": keepalive\n\n")
            assert time.monotonic() - t0 >= 0.15
            rt.events.publish("w:0", "exit", pid=1, reason="exit status 0")
            got += pump(rt.loop, c, b"id: %d-1\n" % rt.events.epoch)
        finally:
            c.close()
        deadline = time.monotonic() + 10
        while streams.open:
            assert time.monotonic() < deadline, "the closed client's stream stayed open"
            turn(rt.loop)
        assert rt.loop._next_timeout() is None, "a timer is left without a client"
        assert rt.events.subscribers == 0
