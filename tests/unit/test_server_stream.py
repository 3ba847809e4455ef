"""Streams on the control socket (supervisor.control.stream) over real Unix sockets, with the
Loop in a thread: lines in order and a final reply; a client that never reads costs at most the
caps and learns how many lines it lost; a stalled one is dropped; a stream holds a slot."""

from __future__ import annotations

import contextlib
import functools
import json
import socket

from supervisor.control.protocol import Reply
from supervisor.control.server import ControlServer, Responder
from supervisor.control.stream import Stream
from tests.unit.test_server_harness import (
    LoopThread,
    Recorder,
    connect,
    read_all,
    start_server,
    wait_for,
)

HOLD = b'{"cmd": "hold"}\n'


def open_stream(lt: LoopThread, rec: Recorder, path: str,
                closed: list[int] | None = None) -> tuple[socket.socket, Stream]:
    """A client connection whose request the handler answered with a stream."""
    n = len(rec.held) + 1
    s = connect(path)
    s.sendall(HOLD)
    wait_for(lambda: len(rec.held) == n, "the request is in")
    stream = lt.call(rec.held[-1].stream)
    assert stream is not None
    if closed is not None:
        stream.on_close = lambda: closed.append(1)
    return s, stream


def lines(raw: bytes) -> list[dict[str, object]]:
    return [json.loads(x) for x in raw.splitlines()]


def test_lines_in_order_then_the_final_reply(lt: LoopThread, sock_path: str) -> None:
    server, rec = start_server(lt, sock_path)
    closed: list[int] = []
    s, stream = open_stream(lt, rec, sock_path, closed)
    with s:
        for i in range(3):
            assert lt.call(functools.partial(stream.send, {"out": f"line {i}\n"}))
        lt.call(lambda: stream.end(Reply(0, err="bye\n")))
        got = lines(read_all(s))
    assert got == [{"stream": True, "out": f"line {i}\n"} for i in range(3)] + [
        {"code": 0, "out": "", "err": "bye\n", "data": None}]
    wait_for(lambda: closed == [1] and server.connections == 0, "the stream closed")
    assert lt.call(lambda: stream.send({"out": "late\n"})) is False
    assert server.buffered == 0


def test_a_client_that_never_reads_costs_at_most_the_cap(lt: LoopThread, sock_path: str) -> None:
    server, rec = start_server(lt, sock_path, write_timeout=60)
    s, stream = open_stream(lt, rec, sock_path)
    stream.cap = 16 * 1024
    payload = "x" * 500
    total = 5000  # 2.5 MB: far past the kernel's socket buffer and the cap

    def flood() -> int:
        return sum(stream.send({"out": f"{i} {payload}\n"}) for i in range(total))

    with s:
        sent = lt.call(flood)
        assert lt.call(lambda: server.buffered) <= stream.cap
        lost = lt.call(lambda: stream.lost)
        assert sent + lost == total and lost > 0
        s.settimeout(0.5)
        got = bytearray()
        try:
            while chunk := s.recv(1 << 20):
                got += chunk
        except TimeoutError:
            pass   # all that was queued is read; the stream is still open
        assert lt.call(lambda: stream.send({"out": "after\n"}))
        lt.call(lambda: stream.end(Reply(0)))
        got += read_all(s)
    docs = lines(bytes(got))
    outs = [str(d["out"]) for d in docs if "out" in d and d.get("stream")]
    assert len(outs) == sent + 1 and outs[-1] == "after\n"
    assert [d for d in docs if "lost" in d] == [{
        "stream": True, "lost": lost,
        "err": f"supervisord: {lost} lines lost (this client did not keep up)\n"}]
    numbers = [int(o.split()[0]) for o in outs[:-1]]
    assert numbers == sorted(numbers) and numbers[0] == 0   # in order, the first ones kept
    wait_for(lambda: server.connections == 0 and server.buffered == 0, "everything given back")


def test_a_stalled_stream_is_dropped_after_write_timeout(lt: LoopThread, sock_path: str) -> None:
    server, rec = start_server(lt, sock_path, write_timeout=0.5)
    closed: list[int] = []
    s, stream = open_stream(lt, rec, sock_path, closed)
    with s:
        lt.call(lambda: [stream.send({"out": "y" * 1000}) for _ in range(2000)])
        assert lt.call(lambda: server.buffered) > 0
        wait_for(lambda: closed == [1], "the stalled stream is dropped")
        assert server.connections == 0 and server.buffered == 0


def test_a_hang_up_ends_the_stream(lt: LoopThread, sock_path: str) -> None:
    server, rec = start_server(lt, sock_path)
    closed: list[int] = []
    s, _stream = open_stream(lt, rec, sock_path, closed)
    s.close()
    wait_for(lambda: closed == [1] and server.connections == 0, "the stream ends on hang-up")


def test_streams_hold_connection_slots(lt: LoopThread, sock_path: str) -> None:
    server, rec = start_server(lt, sock_path, max_connections=2)
    a, _sa = open_stream(lt, rec, sock_path)
    b, _sb = open_stream(lt, rec, sock_path)
    with a, b, connect(sock_path) as c:
        assert c.recv(100) == b""    # accepted and closed at once: no slot left
        assert isinstance(server, ControlServer) and server.connections == 2


def test_a_client_that_floods_bytes_after_its_request_is_ended(
    lt: LoopThread, sock_path: str
) -> None:
    server, rec = start_server(lt, sock_path, max_request=1024)
    closed: list[int] = []
    s, stream = open_stream(lt, rec, sock_path, closed)
    with s:
        s.sendall(b"j" * 512)   # within max_request: dropped, the stream lives
        assert lt.call(lambda: stream.send({"out": "still here\n"}))
        got = b""
        while not got.endswith(b"\n"):
            got += s.recv(4096)
        assert lines(got) == [{"stream": True, "out": "still here\n"}]
        assert server.connections == 1 and not closed
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
            for _ in range(64):
                s.send(b"j" * 4096)
        wait_for(lambda: closed == [1] and server.connections == 0, "the flooder is dropped")


def test_a_half_close_keeps_the_stream(lt: LoopThread, sock_path: str) -> None:
    server, rec = start_server(lt, sock_path)
    s, stream = open_stream(lt, rec, sock_path)
    with s:
        s.shutdown(socket.SHUT_WR)
        wait_for(lambda: lt.call(lambda: stream._half_closed), "the daemon saw the half-close")
        assert lt.call(lambda: stream.send({"out": "x\n"}))
        lt.call(lambda: stream.end(Reply(0)))
        got = lines(read_all(s))
    assert got == [{"stream": True, "out": "x\n"}, {"code": 0, "out": "", "err": "",
                                                    "data": None}]


def test_a_request_sent_with_a_half_close_still_streams(lt: LoopThread, sock_path: str) -> None:
    """The handler answers with a stream at once, inside the read that also saw EOF (what
    `printf REQUEST | nc -U SOCKET` does): the stream still watches the socket."""
    streams: list[Stream] = []

    def handler(_req: object, responder: Responder) -> None:
        st = responder.stream()
        assert st is not None
        st.send({"out": "first\n"})
        streams.append(st)

    server = lt.call(lambda: ControlServer(lt.loop, sock_path, handler))
    lt.servers.append(server)
    with connect(sock_path) as s:
        s.sendall(HOLD.rstrip())   # no newline: the EOF ends the request
        s.shutdown(socket.SHUT_WR)
        wait_for(lambda: streams, "the handler streamed")
        assert lt.call(lambda: streams[0].send({"out": "second\n"}))
        # more than the kernel holds: the stream must watch for writability to go on
        lt.call(lambda: [streams[0].send({"out": "z" * 1000}) for _ in range(400)])
        lt.call(lambda: streams[0].end(Reply(0)))
        got = lines(read_all(s))
    outs = [d.get("out") for d in got]
    assert outs[:2] == ["first\n", "second\n"] and outs[-1] == "" and got[-1]["code"] == 0
    wait_for(lambda: server.connections == 0, "closed after the final reply")
