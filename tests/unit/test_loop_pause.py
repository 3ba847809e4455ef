"""Loop.pause_reader: a listener that cannot accept stops being watched for a while (both
servers use it when accept fails for lack of fds or memory), then is watched again, unless
the pause was cancelled (the server closed meanwhile)."""

from __future__ import annotations

import socket

from supervisor.loop import Loop
from tests.support.wait import wait_until


def turned(loop: Loop, done: object) -> object:
    """One turn of the loop, then whether done (for wait_until)."""
    loop.run_once()
    return done


def test_a_paused_reader_is_not_called_until_the_pause_is_over() -> None:
    loop = Loop()
    a, b = socket.socketpair()
    calls: list[int] = []
    try:
        b.send(b"x")                                  # readable, and stays so (level)
        loop.add_reader(a.fileno(), calls.append)
        loop.run_once()
        assert len(calls) == 1
        loop.pause_reader(a.fileno(), calls.append, 0.1)
        loop.run_once()                               # ends at the pause's timer
        assert len(calls) == 1, "called while paused"
        wait_until(lambda: turned(loop, len(calls) > 1), 10, "the reader watched again")
    finally:
        loop.close()
        a.close()
        b.close()


def test_a_cancelled_pause_leaves_the_reader_unwatched() -> None:
    loop = Loop()
    a, b = socket.socketpair()
    calls: list[int] = []
    try:
        b.send(b"x")
        loop.add_reader(a.fileno(), calls.append)
        loop.pause_reader(a.fileno(), calls.append, 0.05).cancel()
        later: list[bool] = []
        loop.call_later(0.2, lambda: later.append(True))
        wait_until(lambda: turned(loop, later), 10, "a timer after the pause's end")
        assert calls == []
    finally:
        loop.close()
        a.close()
        b.close()
