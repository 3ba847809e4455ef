"""The control socket against hostile peers: every attack gets a code-2 reply or a clean close
within the deadlines, costs bounded memory, and the daemon keeps answering afterwards.

Two targets: a real supervisord (one per module, its worker never touched) for what goes
through the real handlers, and the loop-in-a-thread harness of tests/unit for what needs short
deadlines or a look at the server's counters.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.control.server import MAX_CONNECTIONS
from supervisor.names import parse_signal
from tests.support.daemon import DaemonProcess
from tests.unit.test_server_harness import (
    LoopThread,
    connect,
    roundtrip,
    start_server,
    wait_for,
)

WORKER = "zqw"  # a name no fuzzed target hits by chance


def line(doc: object) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def reply_to(path: str, data: bytes, timeout: float = 10.0, half_close: bool = False
             ) -> dict[str, Any] | None:
    """The one reply line to data, or None when the server closed without one. half_close:
    shut our side after sending (a request without its newline is then complete)."""
    with connect(path, timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we sent: whatever it wrote before is still readable
        raw = read_until_closed(s, timeout)
    if not raw:
        return None
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, f"not one reply line: {raw[:200]!r}"
    doc = json.loads(raw)
    assert isinstance(doc, dict) and type(doc["code"]) is int, doc
    assert isinstance(doc["out"], str) and isinstance(doc["err"], str), doc
    return doc


def connect_when_accepted(path: str) -> socket.socket:
    """connect(), waiting while the listen backlog is full (EAGAIN on a Unix socket)."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            return connect(path)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def read_until_closed(s: socket.socket, timeout: float) -> bytes:
    """What the server wrote before it closed. A server that closes with our unread bytes in
    its queue makes the kernel report a reset after its data: that counts as the close."""
    s.settimeout(timeout)
    buf = bytearray()
    try:
        while chunk := s.recv(1 << 20):
            buf += chunk
    except ConnectionResetError:
        pass
    return bytes(buf)


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- a real daemon -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("sec"),
                      {WORKER: {"command": "sleep 1000", "start_seconds": 0.1}})
    try:
        d.start()
        d.wait_state(f"{WORKER}:0", "RUNNING")    # every test checks that it still is
        yield d
    finally:
        left = d.cleanup()
        print(f"--- supervisord output ---\n{d.log_text()}")
    assert not left, left


def ask(d: DaemonProcess, data: bytes) -> dict[str, Any]:
    reply = reply_to(str(d.socket), data)
    assert reply is not None, f"no reply to {data[:100]!r}"
    return reply


def assert_serving(d: DaemonProcess) -> None:
    assert d.proc is not None and d.proc.poll() is None, "supervisord died"
    reply = ask(d, line({"cmd": "status", "targets": [], "opts": {}}))
    assert reply["code"] == 0 and f"{WORKER}:0" in reply["out"], reply


BAD_REQUESTS = {
    "deep nesting": (b'{"cmd":' * 5000, "nests deeper than 32"),
    "depth 33": (b'{"cmd": "status", "x": ' + b"[" * 32 + b"]" * 32 + b"}", "nests deeper"),
    "escaped lone surrogate": (b'{"cmd": "status", "targets": ["\\udfff"]}', "lone surrogate"),
    "surrogate in cmd": (b'{"cmd": "\\ud800"}', "lone surrogate"),
    "surrogate in a key": (b'{"cmd": "status", "\\udc80": 1}', "lone surrogate"),
    "raw encoded surrogate": (b'{"cmd": "status", "x": "\xed\xbf\xbf"}', "not UTF-8"),
    "invalid utf-8": (b'{"cmd": "st\xffatus"}', "not UTF-8"),
    "NaN": (b'{"cmd": "status", "x": NaN}', "NaN is not a number"),
    "Infinity": (b'{"cmd": "status", "x": -Infinity}', "-Infinity is not a number"),
    "float overflow": (b'{"cmd": "status", "x": 1e999}', "out of range"),
    "5000-digit int": (b'{"cmd": "status", "x": ' + b"7" * 5000 + b"}", "more than 20 digits"),
    "targets a string": (b'{"cmd": "status", "targets": "web"}', "targets must be a list"),
    "opts a list": (b'{"cmd": "status", "opts": []}', '"opts" must be a JSON object'),
    "json flag a string": (b'{"cmd": "status", "opts": {"json": "yes"}}', "'json' must be true"),
    "graceful a string": (
        line({"cmd": "stop", "targets": [WORKER], "opts": {"graceful": "yes"}})[:-1],
        "'graceful' must be true, false or null",
    ),
    "wait a number": (
        line({"cmd": "start", "targets": [WORKER], "opts": {"wait": 0}})[:-1],
        "'wait' must be true or false",
    ),
    "1 MB target": (line({"cmd": "status", "targets": ["x" * (1 << 20)]})[:-1], "too large"),
    "100,000 targets": (line({"cmd": "status", "targets": ["x"] * 100_000})[:-1], "too large"),
    "5000 targets": (line({"cmd": "status", "targets": ["x"] * 5000})[:-1], "too many targets"),
    "long cmd": (line({"cmd": "s" * 100})[:-1], '"cmd" is longer than 64'),
    "long target name": (line({"cmd": "status", "targets": ["x" * 2000]})[:-1], "longer than"),
    # Python's json takes the last of two equal keys: this was a shutdown.
    "cmd twice": (b'{"cmd": "status", "cmd": "shutdown"}', "the key 'cmd' twice"),
    "an opt twice": (line({"cmd": "signal", "targets": [WORKER]})[:-2]
                     + b', "opts": {"signal": "USR1", "signal": "KILL"}}', "'signal' twice"),
}
_BAD_SIGNALS: tuple[object, ...] = ("0", 0, "9" * 20, 10**19, "99", 65, -1, "SIGFOO", "", True,
                                   1.5, [], {})
for _sig in _BAD_SIGNALS:
    BAD_REQUESTS[f"signal {_sig!r}"[:40]] = (
        line({"cmd": "signal", "targets": [WORKER], "opts": {"signal": _sig}})[:-1],
        "unknown signal",
    )


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_is_a_usage_reply(sup: DaemonProcess, name: str) -> None:
    data, message = BAD_REQUESTS[name]
    reply = ask(sup, data + b"\n")
    assert reply["code"] == 2 and message in reply["err"], reply
    assert_serving(sup)
    assert sup.status_of(f"{WORKER}:0")["state"] == "RUNNING"  # nothing was done to it


def test_256_surrogate_requests_lock_nobody_out(sup: DaemonProcess) -> None:
    data = b'{"cmd": "status", "targets": ["\\udfff"]}\n'
    socks = [connect_when_accepted(str(sup.socket)) for _ in range(MAX_CONNECTIONS)]
    try:
        for s in socks:
            s.sendall(data)
        # While all 256 are still open and unread, a new client is served as soon as the daemon
        # has answered them (until then the 257th is over the cap and closed at once).
        status = line({"cmd": "status", "targets": [], "opts": {}})
        reply = wait_for(lambda: reply_to(str(sup.socket), status), "status to be answered",
                         timeout=5.0)
        assert reply["code"] == 0, reply
        for s in socks:
            reply = json.loads(read_until_closed(s, 10.0))
            assert reply["code"] == 2 and "lone surrogate" in reply["err"], reply
    finally:
        for s in socks:
            s.close()
    assert_serving(sup)


# -- the harness: short deadlines, the server's counters ---------------------------------------
def test_handler_exception_is_logged_with_traceback_where_the_reply_says(
        lt: LoopThread, sock_path: str) -> None:
    logged: list[str] = []
    start_server(lt, sock_path, log=logged.append, log_where="the systemd journal")
    reply = roundtrip(sock_path, line({"cmd": "boom"}))
    assert reply["code"] == 1 and reply["err"].endswith("(see the systemd journal)\n"), reply
    assert len(logged) == 1 and "Traceback (most recent call last):" in logged[0]
    assert roundtrip(sock_path, line({"cmd": "echo"}))["code"] == 0


def test_non_reading_clients_cost_bounded_memory_that_comes_back(
        lt: LoopThread, sock_path: str) -> None:
    server, rec = start_server(lt, sock_path, write_timeout=1.5)
    big = line({"cmd": "big", "opts": {"size": 1 << 20}})
    assert len(roundtrip(sock_path, big)["out"]) == 1 << 20  # warm up: the allocator's arenas
    base = rss_bytes()
    socks = [connect(sock_path) for _ in range(100)]
    try:
        for s in socks:
            s.sendall(big)
        wait_for(lambda: len(rec.requests) == 101 or None, "every request to be handled")
        peak = rss_bytes()
        buffered = lt.call(lambda: server.buffered)
        assert buffered <= server.max_output
        assert peak - base < 20 << 20, f"RSS grew by {(peak - base) >> 20} MB"
        # the clients never read: at the write deadline they are dropped and the memory freed
        wait_for(lambda: lt.call(lambda: server.connections) == 0 or None,
                 "the non-reading clients to be dropped", timeout=5.0)
        assert lt.call(lambda: server.buffered) == 0
        time.sleep(0.2)  # the trim runs on the loop after the closes
        after = rss_bytes()
        assert after - base < 5 << 20, f"RSS stayed {(after - base) >> 20} MB up"
        busy = 0
        for s in socks:
            raw = read_until_closed(s, 5.0)
            if raw.endswith(b"\n"):
                busy += b"supervisord: busy" in raw
        assert busy > 0, "a reply beyond max_output must be replaced by the busy error"
    finally:
        for s in socks:
            s.close()
    assert roundtrip(sock_path, line({"cmd": "echo"}))["code"] == 0


def test_slowloris_gets_its_reply_at_the_read_deadline(lt: LoopThread, sock_path: str) -> None:
    server, rec = start_server(lt, sock_path, read_timeout=1.0)
    with connect(sock_path) as s:
        t0 = time.monotonic()
        for ch in b'{"cmd": "echo", "pad": "':
            try:
                s.send(bytes([ch]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)
        raw = read_until_closed(s, 5.0)
        elapsed = time.monotonic() - t0
    assert json.loads(raw)["err"] == "supervisord: bad request: no complete request within 1 s\n"
    assert elapsed < 3.0
    assert rec.requests == []
    wait_for(lambda: lt.call(lambda: server.connections) == 0 or None, "the slot to come back")


def test_silent_peers_hold_slots_no_longer_than_the_read_deadline(
        lt: LoopThread, sock_path: str) -> None:
    server, _rec = start_server(lt, sock_path, read_timeout=1.0, max_connections=8)
    silent = [connect(sock_path) for _ in range(8)]
    try:
        wait_for(lambda: lt.call(lambda: server.connections) == 8 or None, "8 silent peers")
        assert reply_to(sock_path, line({"cmd": "echo"})) is None  # over the cap: closed at once
        t0 = time.monotonic()
        wait_for(lambda: reply_to(sock_path, line({"cmd": "echo"})), "a slot", timeout=5.0)
        assert time.monotonic() - t0 < 2.5
    finally:
        for s in silent:
            s.close()


def test_garbage_after_the_request_is_not_read_forever(lt: LoopThread, sock_path: str) -> None:
    _server, rec = start_server(lt, sock_path)
    with connect(sock_path, timeout=2.0) as s:
        s.sendall(line({"cmd": "hold"}))
        wait_for(lambda: rec.held, "the request to reach the handler")
        sent = 0
        with pytest.raises(TimeoutError):  # the server stops reading: our writes block
            while sent < 64 << 20:
                sent += s.send(b"g" * 65536)
        lt.call(lambda: rec.held[0]({"code": 0, "out": "late\n"}))
        assert json.loads(read_until_closed(s, 5.0))["out"] == "late\n"


def test_never_reading_client_dropped_at_the_write_deadline(
        lt: LoopThread, sock_path: str) -> None:
    server, _rec = start_server(lt, sock_path, write_timeout=0.5)
    with connect(sock_path) as s:
        s.sendall(line({"cmd": "big", "opts": {"size": 8 << 20}}))
        t0 = time.monotonic()
        wait_for(lambda: lt.call(lambda: server.connections) == 0 or None,
                 "the connection to be dropped", timeout=5.0)
        assert time.monotonic() - t0 < 2.0
        assert lt.call(lambda: server.buffered) == 0


# -- fuzzing ---------------------------------------------------------------------------------
_leaf = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**18)
         | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
         | st.sampled_from(["\udfff", "\ud800x", "a\udc80"]))
_json = st.recursive(_leaf, lambda c: st.lists(c, max_size=5)
                     | st.dictionaries(st.text(max_size=8), c, max_size=5), max_leaves=30)
_cmd = st.sampled_from(["status", "pid", "tail", "signal", "", "nope"]) | _json
_doc = st.fixed_dictionaries({"cmd": _cmd}, optional={"targets": _json, "opts": _json})
_deep = st.integers(1, 3000).map(lambda n: '{"cmd": "status", "x": ' + "[" * n + "]" * n + "}")
_text = _doc.map(lambda d: json.dumps(d, allow_nan=True)) | _deep | _json.map(json.dumps)
_request = _text.map(lambda t: t.encode("utf-8", "surrogatepass") + b"\n") | st.binary(max_size=300)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.booleans(), st.none()))
def test_parse_signal_is_total(value: str | int | float | bool | None) -> None:
    try:
        num = parse_signal(value)  # type: ignore[arg-type]  # anything a request may hold
    except ValueError:
        return
    assert 1 <= num <= 64


def test_fuzzed_requests_get_a_reply_or_a_clean_close(sup: DaemonProcess) -> None:
    path = str(sup.socket)
    seen: dict[int, int] = {}

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_request)
    def check(data: bytes) -> None:
        reply = reply_to(path, data, half_close=True)
        code = -1 if reply is None else reply["code"]
        seen[code] = seen.get(code, 0) + 1
        assert code in (-1, 0, 2, 4), (data[:200], reply)

    t0 = time.monotonic()
    check()
    assert time.monotonic() - t0 < 60
    assert seen.get(2, 0) > 0, seen
    assert_serving(sup)
    assert sup.status_of(f"{WORKER}:0")["state"] == "RUNNING"


def test_only_big_replies_are_refused_as_busy(lt: LoopThread, sock_path: str) -> None:
    server, _rec = start_server(lt, sock_path, max_output=1 << 20)
    with connect(sock_path) as hog:  # takes nothing of its 4 MB reply
        hog.sendall(line({"cmd": "big", "opts": {"size": 4 << 20}}))
        wait_for(lambda: lt.call(lambda: server.buffered) > 1 << 20 or None, "the hog's reply")
        assert roundtrip(sock_path, line({"cmd": "echo"}))["code"] == 0  # small: always sent
        reply = roundtrip(sock_path, line({"cmd": "big", "opts": {"size": 200_000}}))
        assert reply == {"code": 1, "out": "", "data": None, "err": "supervisord: busy: other "
                         "clients have not taken their replies yet; try again\n"}


def test_a_full_connection_table_is_logged_once_not_per_refusal(
        lt: LoopThread, sock_path: str) -> None:
    # supervisorctl, closed on at once, says "see its log": the log said nothing.
    logged: list[str] = []
    server, _rec = start_server(lt, sock_path, read_timeout=5.0, max_connections=4,
                                log=logged.append)
    silent = [connect(sock_path) for _ in range(4)]
    try:
        wait_for(lambda: lt.call(lambda: server.connections) == 4 or None, "4 silent peers")
        for _ in range(5):
            assert reply_to(sock_path, line({"cmd": "echo"})) is None
        full = [m for m in lt.call(lambda: list(logged)) if "connections open" in m]
        assert full == ["control socket: 4 connections open, the most; new ones are closed "
                        "unanswered until slots free up (a client that sends no request is "
                        "dropped after 5 s)"], logged
    finally:
        for s in silent:
            s.close()
