"""Hostile clients of GET /api/v1/events on a real supervisord: one that floods bytes into its
stream, repeated or absurd resume headers, HEAD. Each costs at most its own connection, and
`supervisorctl status` keeps answering."""

from __future__ import annotations

import contextlib
import socket
import time

from tests.support.daemon import DaemonFactory, rss_kib
from tests.support.http import free_port, request

PLAIN = {"command": "sleep 100000", "start_seconds": 0.2, "kill_timeout": 2}


def test_hostile_event_stream_clients(daemon_factory: DaemonFactory) -> None:
    port = free_port()
    d = daemon_factory({"plain": PLAIN}, supervisor={"http": f"127.0.0.1:{port}"}).start()
    d.wait_state("plain:0", "RUNNING")
    rss0 = rss_kib(d.pid)
    floods = []
    try:
        for _ in range(4):       # ask for events, then push bytes at the daemon, never read
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            floods.append(s)
            s.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            s.setblocking(False)
            sent, deadline = 0, time.monotonic() + 3
            while sent < 64 << 20 and time.monotonic() < deadline:
                try:
                    sent += s.send(b"x" * 65536)
                except BlockingIOError:
                    break            # the daemon stopped reading it: its buffer is full
            assert sent < 64 << 20, "the daemon kept reading a flood"
        t0 = time.monotonic()
        assert d.ctl("status").returncode == 0
        assert time.monotonic() - t0 < 5.0
        assert request(port, "GET", "/livez").status == 200
        assert rss_kib(d.pid) - rss0 < 16 * 1024, "a flood grew the daemon"
    finally:
        for s in floods:
            s.close()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: 1\r\n"
                  b"Last-Event-ID: 2\r\n\r\n")
        head = b""
        with contextlib.suppress(TimeoutError):
            while b"\r\n\r\n" not in head and (chunk := s.recv(4096)):
                head += chunk
        assert head.startswith(b"HTTP/1.1 400"), head
    for value in ("1" * 19, "0x10", "1e3", "\u00b2"):
        r = request(port, "GET", "/api/v1/events", {"Last-Event-ID": value})
        assert r.status == 400, (value, r)
    only = request(port, "HEAD", "/api/v1/events")
    assert only.status == 200 and only.body == b"", only
    assert only.headers["content-type"].startswith("text/event-stream")
    assert d.proc is not None and d.proc.poll() is None
