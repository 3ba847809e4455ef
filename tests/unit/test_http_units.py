"""supervisor.http's parts without a daemon: the address and config checks, the token file
(hostile files refused with what to do), constant-time token checks, the core's restart
counter, the loop's lag histogram, and the server's route table with a streamed response on a
real Loop and a real socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from supervisor.config import ConfigError, load_config
from supervisor.core import Exited, Spawned, StartRequested, StopRequested
from supervisor.http.address import AddressError, parse_address
from supervisor.http.token import TokenError, read_token, token_matches
from supervisor.loop import Loop
from tests.unit.test_core_sim import BACKOFF, START, Sim, code

GOOD_TOKEN = b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("text, shown, loopback", [
    ("127.0.0.1:9001", "127.0.0.1:9001", True), ("localhost:1", "127.0.0.1:1", True),
    ("[::1]:9001", "[::1]:9001", True), ("0.0.0.0:80", "0.0.0.0:80", False),
    ("10.1.2.3:9001", "10.1.2.3:9001", False), ("/run/pyvisor/http.sock", "/run/pyvisor/http.sock",
                                                  True)])
def test_addresses(text: str, shown: str, loopback: bool) -> None:
    a = parse_address(text)
    assert (str(a), a.loopback) == (shown, loopback)


@pytest.mark.parametrize("text, why", [
    ("9001", "HOST:PORT"), (":9001", "HOST:PORT"), ("127.0.0.1:0", "port"),
    ("127.0.0.1:65536", "port"), ("127.0.0.1:９０", "port"), ("::1:9001", "brackets"),
    ("example.com:80", "not an IP address"), ("/" + "a" * 200, "at most 107 bytes"),
    ("127.0.0.1:90\0", "NUL")])
def test_bad_addresses(text: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        parse_address(text)


def _config(tmp_path: Path, sup: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(f"supervisor: {{socket: {tmp_path}/s.sock, {sup}}}\n"
                    "workers: {web: {command: sleep 1}}\n")
    return str(path)


@pytest.mark.parametrize("sup, message", [
    ("http: '0.0.0.0:9001'", "supervisor: http: '0.0.0.0:9001' is reachable from other "
                             "machines"),
    ("http: '127.0.0.1:x'", "supervisor.http: port must be a number"),
    ("http: 9001", "supervisor.http: "),
    ("http: '127.0.0.1:9001', http_ready: [nope]", "supervisor.http_ready[0]: unknown worker "
                                                   "'nope'"),
    ("http_token_file: /nonexistent/t", "supervisor.http_token_file: has no effect without http"),
    ("http: '127.0.0.1:9001', http_metrics_instances: -1", "supervisor.http_metrics_instances"),
    ("http: '127.0.0.1:9001', htp_ready: [web]", "did you mean 'http_ready'"),
])
def test_config_errors(tmp_path: Path, sup: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_config(tmp_path, sup))
    assert message in str(e.value)
    assert str(tmp_path / "c.yaml") in str(e.value)


def test_remote_bind_needs_an_explicit_choice(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, "http: '0.0.0.0:9001', http_allow_remote: true"))
    assert cfg.supervisor.http == "0.0.0.0:9001"


def _token_file(tmp_path: Path, data: bytes = GOOD_TOKEN, mode: int = 0o600) -> Path:
    p = tmp_path / "token"
    p.write_bytes(data)
    p.chmod(mode)
    return p


def test_token_file_read(tmp_path: Path) -> None:
    assert read_token(str(_token_file(tmp_path, GOOD_TOKEN + b"\n"))) == GOOD_TOKEN
    cfg = load_config(_config(tmp_path, f"http: '127.0.0.1:9001', http_token_file: "
                                        f"{tmp_path}/token"))
    assert cfg.supervisor.http_token_file == str(tmp_path / "token")


@pytest.mark.parametrize("make, why", [
    (lambda p: _token_file(p, mode=0o644), "others can change or read it; chmod 600"),
    (lambda p: _token_file(p, mode=0o620), "others can change or read it"),
    (lambda p: _token_file(p, b"short"), "use at least 16"),
    (lambda p: _token_file(p, b"x" * 5000), "more than 4096"),
    (lambda p: _token_file(p, b"with spaces in the token!!"), "printable ASCII"),
    (lambda p: p / "missing", "no such file; create it"),
])
def test_hostile_token_files(tmp_path: Path, make: object, why: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(TokenError, match=why):
        read_token(str(path))
    if (tmp_path / "token").exists() or why.startswith("no such"):
        with pytest.raises(ConfigError, match="supervisor.http_token_file: "):
            load_config(_config(tmp_path, f"http: '127.0.0.1:9001', http_token_file: {path}"))


def test_token_link_fifo_and_foreign_owner_refused(tmp_path: Path) -> None:
    real = _token_file(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(TokenError, match="symbolic link"):
        read_token(str(link))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(TokenError, match="FIFO"):
        read_token(str(fifo))       # never blocks on it
    if os.geteuid() == 0:
        os.chown(real, 65534, -1)
        with pytest.raises(TokenError, match="must be root's or uid"):
            read_token(str(real))
        open_dir = tmp_path / "open"
        open_dir.mkdir(mode=0o777)
        open_dir.chmod(0o777)
        os.chown(open_dir, 65534, -1)
        _token_file(open_dir)
        with pytest.raises(TokenError, match="another user could"):
            read_token(str(open_dir / "token"))


def test_token_matches() -> None:
    assert token_matches(GOOD_TOKEN, b"Bearer " + GOOD_TOKEN)
    assert token_matches(GOOD_TOKEN, b"bearer  " + GOOD_TOKEN + b" ")
    for bad in (None, b"", GOOD_TOKEN, b"Basic " + GOOD_TOKEN, b"Bearer " + GOOD_TOKEN[:-1],
                b"Bearer " + GOOD_TOKEN + b"x", b"Bearer"):
        assert not token_matches(GOOD_TOKEN, bad)


def test_core_counts_automatic_restarts_only() -> None:
    sim = Sim()
    sim.feed(StartRequested(0.0))
    sim.feed(Spawned(0.0, 100))
    sim.fire(START)                              # RUNNING (start_seconds)
    sim.at(1.0)
    sim.feed(Exited(sim.at(1.0), code(1)))       # from RUNNING: respawned at once
    assert sim.inst.restarts == 1
    sim.feed(Spawned(sim.now, 101))
    sim.feed(Exited(sim.at(0.05), code(1)))      # failed start: BACKOFF, then respawn
    assert sim.inst.restarts == 1
    sim.fire(BACKOFF)
    assert sim.inst.restarts == 2
    sim.feed(Spawned(sim.now, 102))
    sim.feed(StopRequested(sim.at(0.1), graceful=False, restart=True))   # the operator's
    sim.feed(Exited(sim.at(0.1), code(0)))
    assert sim.inst.restarts == 2, "an operator's restart is not counted"


def test_loop_lag_is_the_lateness_of_timers() -> None:
    now = [100.0]
    loop = Loop(clock=lambda: now[0])
    try:
        ran: list[str] = []
        loop.call_at(100.0, lambda: ran.append("a"))
        loop.call_at(99.0, lambda: ran.append("b"))
        now[0] = 100.25
        loop.run_once()
        assert sorted(ran) == ["a", "b"]
        assert loop.lag.last in (0.25, 1.25)
        assert sum(loop.lag.counts) == 2 and loop.lag.sum == pytest.approx(1.5)
        assert loop.lag.counts[5] == 1 and loop.lag.counts[-2] == 1    # <=0.5 s, <=5 s
        assert loop.turns == 1
    finally:
        loop.close()


def test_route_table_and_a_streamed_response() -> None:
    from supervisor.http.exchange import Exchange, Router, Stream
    from supervisor.http.server import HttpServer

    loop = Loop()
    router = Router()
    streams: list[Stream] = []
    closed: list[bool] = []

    def events(ex: Exchange) -> None:
        s = ex.stream(200, b"text/event-stream", lambda: closed.append(True))
        s.send(b"data: one\n\n")
        streams.append(s)

    router.add("GET", "/events", events)
    router.add("GET", "/things/{id}", lambda ex: ex.text(200, f"thing {ex.params['id']}\n"))
    server = HttpServer(loop, parse_address(f"127.0.0.1:{free_tcp_port()}"), router)
    port = int(server.bound.rsplit(":", 1)[1])
    got: dict[str, bytes] = {}

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"GET /things/42 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                      b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            buf = b""
            while b"data: two" not in buf and b"0\r\n\r\n" not in buf:
                chunk = c.recv(4096)
                if not chunk:
                    break
                buf += chunk
            got["all"] = buf

    t = threading.Thread(target=client)
    t.start()
    try:
        def turn() -> None:           # one turn, never longer than 50 ms
            loop.call_later(0.05, lambda: None)
            loop.run_once()

        for _ in range(200):
            turn()
            if streams:
                break
        streams[0].send(b"data: two\n\n")
        streams[0].end()
        for _ in range(100):
            if not t.is_alive() and closed:
                break
            turn()
        t.join(10)
    finally:
        server.close()
        loop.close()
    body = got["all"]
    assert b"thing 42\n" in body
    assert b"transfer-encoding: chunked" in body.lower() and b"data: one\n\n" in body
    assert b"data: two\n\n" in body
    assert closed == [True]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_daemon_without_http_never_imports_h11_or_prometheus_client(tmp_path: Path) -> None:
    path = _config(tmp_path, "log_dir: logs")
    code_ = ("import sys; import supervisor.daemon as d; from supervisor.config import "
             f"load_config; load_config({path!r}); "
             "import supervisor.control.handlers, supervisor.http.address; "
             "bad = [m for m in ('h11', 'prometheus_client', 'supervisor.http.server') "
             "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code_], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_route_is_in_the_openapi_document() -> None:
    from typing import Any, cast

    from supervisor.http.routes import Routes, load_openapi

    routes = Routes(cast(Any, None), cast(Any, None), None, lambda: b"", None).router()
    spec = load_openapi()
    served = {(m.lower(), pattern) for _segs, methods, pattern in routes._routes
              for m in methods}
    documented = {(m, path) for path, ops in spec["paths"].items() for m in ops}
    assert served == documented
    assert spec["openapi"].startswith("3.")


def test_a_route_that_raises_costs_its_request_only() -> None:
    from supervisor.http.exchange import Exchange, Router
    from supervisor.http.server import HttpServer

    def boom(ex: Exchange) -> None:
        raise RuntimeError("bug")

    def late_boom(ex: Exchange) -> None:
        ex.text(200, "fine\n")
        raise RuntimeError("bug after the reply")

    loop = Loop()
    router = Router()
    router.add("GET", "/boom", boom)
    router.add("GET", "/late", late_boom)
    logged: list[str] = []
    server = HttpServer(loop, parse_address(f"127.0.0.1:{free_tcp_port()}"), router,
                        log=logged.append)
    port = int(server.bound.rsplit(":", 1)[1])
    got: list[bytes] = []

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"GET /boom HTTP/1.1\r\nHost: localhost\r\n\r\n"
                      b"GET /late HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            buf = b""
            while chunk := c.recv(4096):
                buf += chunk
            got.append(buf)

    t = threading.Thread(target=client)
    t.start()
    try:
        for _ in range(200):
            loop.call_later(0.05, lambda: None)
            loop.run_once()
            if got:
                break
        t.join(10)
    finally:
        server.close()
        loop.close()
    assert got and b"500 Internal Server Error" in got[0] and b"RuntimeError: bug" in got[0]
    assert b"fine\n" in got[0]
    assert len(logged) == 2 and "Traceback" in logged[0]


@pytest.mark.parametrize("value, count", [
    (7, 7), (0, 0), (None, 0), (True, 0), (-1, 0), (1 << 53, 0), ("5", 0), (5.0, 0),
    ([1], 0), ({"a": 1}, 0)])
def test_recorded_restart_counts_are_checked(value: object, count: int) -> None:
    from supervisor.runtime.intent import restarts_of

    assert restarts_of({"restarts": value}) == count
    assert restarts_of({}) == 0


def test_http_without_h11_installed_is_a_clear_config_error(tmp_path: Path) -> None:
    path = _config(tmp_path, "http: '127.0.0.1:9001'")
    code_ = ("import sys; sys.modules['h11'] = None; "
             f"sys.argv = ['supervisord', '-c', {path!r}, '--check']; "
             "from supervisor.daemon import main; main()")
    r = subprocess.run([sys.executable, "-c", code_], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r
    assert "supervisor.http: needs the h11 package, which is not installed: pip install " \
           "'pyvisor[http]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
