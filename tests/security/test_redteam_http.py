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
from tests.unit.test_server_harness import LoopThread, connect, loop_thread_fixture, wait_for


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    yield from loop_thread_fixture()


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
    handlers = Handlers(types.SimpleNamespace(runtime=rt, leaving=""))   # type: ignore[arg-type]
    path = str(tmp_path / "ctl.sock")
    server = lt.call(lambda: ControlServer(lt.loop, path, handlers))
    lt.servers.append(server)
    for _ in range(50):
        s = _connect_when_accepted(path)
        s.sendall(b'{"cmd": "events", "targets": ["all"], "opts": {"follow": true}}\n')
        s.close()
    wait_for(lambda: lt.call(lambda: not server._conns), "every connection closed")
    assert lt.call(lambda: bus.subscribers) == 0
