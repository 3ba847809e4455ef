"""Hostile HTTP clients against a real supervisord: slow, huge, malformed, many, and ones that
never read. Each must cost at most its own connection, and `supervisorctl status` must keep
answering while they do their worst."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonFactory, DaemonProcess
from tests.support.http import free_port, request
from tests.support.wait import wait_until

PLAIN = {"command": "sleep 100000", "start_seconds": 0.2, "kill_timeout": 2}


@pytest.fixture
def served(daemon_factory: DaemonFactory) -> Iterator[tuple[DaemonProcess, int]]:
    port = free_port()
    d = daemon_factory({"plain": {**PLAIN, "numprocs": 3}},
                       supervisor={"http": f"127.0.0.1:{port}"}).start()
    d.wait_state("plain:2", "RUNNING")
    yield d, port


@contextlib.contextmanager
def raw(port: int, timeout: float = 15.0) -> Iterator[socket.socket]:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        yield s
    finally:
        s.close()


def read_all(s: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything until the server closes (or the socket's timeout)."""
    out = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while len(out) < limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def read_one(s: socket.socket) -> bytes:
    """One response (head and content-length body), or what came before the server closed."""
    out = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while b"\r\n\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
        head, _, body = out.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        out = head + b"\r\n\r\n" + body
    return out


def status_time(d: DaemonProcess) -> float:
    t0 = time.monotonic()
    r = d.ctl("status", timeout=30)
    assert r.returncode == 0, r.stderr
    return time.monotonic() - t0


def assert_still_serving(d: DaemonProcess, port: int) -> None:
    assert request(port, "GET", "/livez").status == 200
    assert status_time(d) < 5.0, "supervisorctl status must stay fast"
    assert d.proc is not None and d.proc.poll() is None


MALFORMED: list[tuple[bytes, bytes]] = [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET * HTTP/1.1\r\nHost: localhost\r\n\r\n", b"400"),
    (b"GET http://evil/metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", b"400"),
    (b"GET /api/v1/%2e%2e/metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", b"400"),
    (b"GET /api/v1/../metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", b"400"),
    (b"GET /metrics%00 HTTP/1.1\r\nHost: localhost\r\n\r\n", b"400"),
    (b"GET /%ff%fe HTTP/1.1\r\nHost: localhost\r\n\r\n", b"400"),
    (b"GET //metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", b"400"),
    (b"GET /metrics HTTP/1.1\r\n\r\n", b"400"),                      # HTTP/1.1 needs Host
    (b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nHost: evil\r\n\r\n", b"400"),
    (b"GET /metrics HTTP/1.1\r\nHost: evil.example\r\n\r\n", b"421"),   # DNS rebinding
    (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1.nip.io\r\n\r\n", b"421"),
    (b"GET /etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n", b"404"),
    (b"PUT /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n", b"405"),
    (b"OPTIONS /api/v1/instances/plain/stop HTTP/1.1\r\nHost: localhost\r\n\r\n", b"405"),
    (b"GET /metrics?" + b"&".join(b"a%d=1" % i for i in range(100)) + b" HTTP/1.1\r\n"
     b"Host: localhost\r\n\r\n", b"400"),
    (b"POST /api/v1/instances/plain/stop HTTP/1.1\r\nHost: localhost\r\n"
     b"Content-Length: 100000000\r\n\r\n", b"413"),
    (b"POST /api/v1/instances/plain/stop HTTP/1.1\r\nHost: localhost\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n" + b"8000\r\n" + b"x" * 0x8000 + b"\r\n"
     + b"8000\r\n" + b"x" * 0x8000 + b"\r\n" + b"10\r\n" + b"x" * 16 + b"\r\n", b"413"),
    (b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
     b"431"),
    (b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: b\r\n" * 3000 + b"\r\n", b"431"),
    # a repeated query parameter: we took the first, a proxy in front may check the last
    (b"POST /api/v1/instances/plain/signal?signal=KILL&signal=HUP HTTP/1.1\r\n"
     b"Host: localhost\r\nContent-Length: 0\r\n\r\n", b"400"),
    (b"GET /api/v1/events?after=0&targets=plain&after=5 HTTP/1.1\r\nHost: localhost\r\n\r\n",
     b"400"),
]


def test_malformed_requests_are_refused(served: tuple[DaemonProcess, int]) -> None:
    d, port = served
    wrong = []
    for payload, status in MALFORMED:
        with raw(port) as s:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(payload)
            reply = read_one(s)
        if reply.split(b" ", 2)[1:2] != [status]:
            wrong.append(f"{payload[:80]!r}: expected {status!r}, got {reply[:200]!r}")
    assert not wrong, "\n".join(wrong)
    assert_still_serving(d, port)


def test_http_10_and_keep_alive_and_head(served: tuple[DaemonProcess, int]) -> None:
    d, port = served
    with raw(port) as s:
        s.sendall(b"GET /livez HTTP/1.0\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 200")
    with raw(port) as s:            # two requests, pipelined, on one connection
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n"
                  b"HEAD /metrics HTTP/1.1\r\nHost: [::1]:1\r\nConnection: close\r\n\r\n")
        out = read_all(s)
    assert out.count(b"HTTP/1.1 200") == 2, out[:500]
    assert b"pyvisor_" not in out, "HEAD has no body"


def test_keep_alive_is_bounded(served: tuple[DaemonProcess, int]) -> None:
    d, port = served
    with raw(port) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n" * 150)
        out = read_all(s)
    assert out.count(b"HTTP/1.1 200") == 100, "at most 100 requests per connection"
    assert out.count(b"connection: close") == 1


def test_slow_clients_are_cut_off_and_status_stays_fast(served: tuple[DaemonProcess, int]
                                                         ) -> None:
    d, port = served
    slow = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(20)]
    try:
        for s in slow:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: local")     # never finished
        t0 = time.monotonic()
        for _ in range(5):
            assert_still_serving(d, port)
        for s in slow:                    # slowloris: a byte now and then does not help
            s.sendall(b"h")
        replies = [read_all(s) for s in slow]
        waited = time.monotonic() - t0
    finally:
        for s in slow:
            s.close()
    assert all(r.startswith(b"HTTP/1.1 408") for r in replies), replies[0][:200]
    assert waited < 25, f"slow clients were cut off only after {waited:.1f} s"
    assert_still_serving(d, port)


def test_many_connections_are_capped(served: tuple[DaemonProcess, int]) -> None:
    d, port = served
    held: list[socket.socket] = []
    try:
        for _ in range(300):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=15))
        assert status_time(d) < 5.0

        def refused() -> int:
            n = 0
            for s in held:
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        n += 1
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    n += 1
            return n

        closed = wait_until(refused, 15, "connections past the cap closed",
                            ok=lambda n: n >= 300 - 64)
        assert closed <= 300 - 64 + 5
    finally:
        for s in held:
            s.close()

    def serving() -> bool:
        try:
            return request(port, "GET", "/livez", timeout=5).status == 200
        except OSError:
            return False

    wait_until(serving, 15, "the endpoint to serve again once the flood is gone")
    assert_still_serving(d, port)


def test_clients_that_never_read(served: tuple[DaemonProcess, int]) -> None:
    d, port = served
    socks = []
    try:
        for _ in range(30):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            # a flood of pipelined requests whose replies are never taken
            with contextlib.suppress(BlockingIOError):
                s.setblocking(False)
                s.send(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n" * 2000)
            socks.append(s)
        for _ in range(3):
            assert_still_serving(d, port)

        def gone(s: socket.socket) -> bool:
            s.setblocking(True)
            s.settimeout(0.05)
            try:
                while s.recv(1 << 20):
                    pass
                return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True

        wait_until(lambda: all(gone(s) for s in socks), 40,
                   "connections whose replies are not taken to be closed")
    finally:
        for s in socks:
            s.close()
    assert_still_serving(d, port)


def test_bind_to_an_address_in_use_is_a_clear_error(daemon_factory: DaemonFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        d = daemon_factory({"plain": PLAIN}, supervisor={"http": f"127.0.0.1:{port}"})
        r = subprocess.run([*d_command(d)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"cannot start: http 127.0.0.1:{port}: cannot listen: Address already in use" in (
        r.stderr), r.stderr


def d_command(d: DaemonProcess) -> list[str]:
    from tests.support.daemon import SUPERVISORD
    return [SUPERVISORD, "-c", str(d.config_path)]


def test_unix_socket_endpoint(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    path = tmp_path / "http.sock"
    d = daemon_factory({"plain": PLAIN}, supervisor={"http": str(path)}).start()
    d.wait_state("plain:0", "RUNNING")
    assert (path.stat().st_mode & 0o777) == 0o600
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n")
        out = read_all(s)
    assert out.startswith(b"HTTP/1.1 200") and b"ready: 1 instances RUNNING" in out, out
    d.stop()
    assert not path.exists(), "the daemon removes its HTTP socket"


def test_a_scrape_flood_costs_one_render_per_second(served: tuple[DaemonProcess, int]) -> None:
    d, port = served
    first, second = (request(port, "GET", "/metrics").body for _ in range(2))
    assert first == second, "scrapes within a second get the same text (turns, uptime...)"
    a, b = (request(port, "GET", "/api/v1/status").body for _ in range(2))
    assert a == b
    stop = threading.Event()
    count = [0]

    def hammer() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                request(port, "GET", "/metrics", timeout=10)
                count[0] += 1

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: count[0], 30, "the flood to get going", ok=lambda n: n >= 50)
        for _ in range(3):
            assert status_time(d) < 5.0
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    def metrics_served() -> float:
        text = request(port, "GET", "/metrics").text
        return sum(float(line.split()[1]) for line in text.splitlines()
                   if line.startswith('pyvisor_http_requests_total{route="/metrics"'))

    # the next render (within a second) counts the flood's requests
    wait_until(metrics_served, 10, "a render that counts the flood", ok=lambda n: n >= 50)
