"""Test support for the control socket: a real Loop running in a thread, a real ControlServer on
it, and small raw-socket clients. Imported by tests/unit/test_server*.py and test_ctl*.py (holds
no tests itself).

Everything that touches the loop (creating the server, replying later, closing) runs on the loop's
thread through ``LoopThread.call``; the loop is woken through a pipe, so nothing polls.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from supervisor.control.protocol import Request
from supervisor.control.server import ControlServer, Responder
from supervisor.loop import Loop
from tests.support.wait import wait_until

T = TypeVar("T")
DEADLINE = 10.0


class LoopThread:
    def __init__(self) -> None:
        self.loop = Loop()
        self.errors: list[BaseException] = []
        self.servers: list[ControlServer] = []
        self._calls: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._lock = threading.Lock()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.loop.add_reader(self._r, self._on_wake)
        self.thread = threading.Thread(target=self._run, name="loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.loop.run()
        except BaseException as e:  # noqa: BLE001 -- reported by the fixture
            self.errors.append(e)

    def _on_wake(self, _mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._r, 4096)
        with self._lock:
            calls, self._calls = self._calls, []
        for fn, fut in calls:
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 -- handed to the caller
                fut.set_exception(e)

    def call(self, fn: Callable[[], T], timeout: float = DEADLINE) -> T:
        """Run fn on the loop's thread and return its result (or raise its exception)."""
        fut: Future[T] = Future()
        with self._lock:
            self._calls.append((fn, fut))
        os.write(self._w, b"x")
        return fut.result(timeout)

    def stop(self) -> None:
        if self.thread.is_alive():
            for server in self.servers:
                self.call(server.close)
            self.call(self.loop.stop)
            self.thread.join(DEADLINE)
        self.loop.close()
        os.close(self._r)
        os.close(self._w)


class Recorder:
    """A handler that records requests. Behaviour by cmd:
    echo -> code 0, data = the request; defer -> the same after opts.delay seconds;
    hold (or replies[cmd] = None) -> keeps the responder (reply with LoopThread.call);
    big -> an out of opts.size bytes;
    boom -> raises; anything else -> ``replies[cmd]`` (default code 0)."""

    def __init__(self, loop: Loop, replies: dict[str, dict[str, Any] | None] | None = None) -> None:
        self.loop = loop
        self.replies = replies or {}
        self.requests: list[Request] = []
        self.held: list[Responder] = []

    def __call__(self, req: Request, responder: Responder) -> None:
        self.requests.append(req)
        cmd = req["cmd"]
        opts = req.get("opts") or {}
        if cmd == "echo":
            responder({"code": 0, "out": "echo\n", "err": "", "data": req})
        elif cmd == "defer":
            reply = {"code": 0, "out": "deferred\n", "err": "", "data": req}
            self.loop.call_later(float(opts["delay"]), lambda: responder(reply))
        elif cmd == "hold" or (cmd in self.replies and self.replies[cmd] is None):
            self.held.append(responder)
        elif cmd == "big":
            responder({"code": 0, "out": "x" * int(opts["size"]), "err": "", "data": None})
        elif cmd == "boom":
            raise RuntimeError("boom")
        else:
            responder(self.replies.get(cmd) or {"code": 0, "out": "", "err": "", "data": None})


def start_server(lt: LoopThread, path: str, **kw: Any) -> tuple[ControlServer, Recorder]:
    rec = Recorder(lt.loop, kw.pop("replies", None))
    server = lt.call(lambda: ControlServer(lt.loop, path, rec, **kw))
    lt.servers.append(server)
    return server, rec


def connect(path: str, timeout: float = DEADLINE) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_all(s: socket.socket, timeout: float = DEADLINE) -> bytes:
    """Everything until EOF (the server closes after its reply), within timeout."""
    s.settimeout(timeout)
    buf = bytearray()
    while chunk := s.recv(1 << 20):
        buf += chunk
    return bytes(buf)


def roundtrip(path: str, data: bytes, timeout: float = DEADLINE) -> dict[str, Any]:
    with connect(path, timeout) as s:
        s.sendall(data)
        raw = read_all(s, timeout)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, f"not one reply line: {raw[:200]!r}"
    doc = json.loads(raw)
    assert isinstance(doc, dict)
    return doc


def wait_for(pred: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Poll pred until it is truthy and return that; fail with what was last seen."""
    return wait_until(pred, timeout, what, interval=0.01)


def readable(s: socket.socket, timeout: float) -> bool:
    r, _w, _x = select.select([s], [], [], timeout)
    return bool(r)


def loop_thread_fixture() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.stop()
    assert not lt.errors, f"the loop raised: {lt.errors!r}"
