"""The one reply of one control connection: what a handler is given (server.py makes it), and
glibc's malloc_trim, with which the server hands the heap of big replies back."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from supervisor.control.protocol import Reply
from supervisor.control.stream import Stream

if TYPE_CHECKING:
    from supervisor.control.server import _Conn


class Responder:
    """Sends the one reply of one connection. Call it once; later calls are ignored.

    It takes a protocol Reply, or a mapping with some of its keys (the others are filled in).

    ``closed`` becomes True when the client went away (or the server closed); a reply given then
    is dropped silently. ``replied`` is True once a reply was accepted.
    """

    __slots__ = ("_conn", "closed", "replied")

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self.closed = False
        self.replied = False

    def __call__(self, reply: Reply | Mapping[str, Any]) -> None:
        if self.closed or self.replied:
            return
        self.replied = True
        self._conn.send_reply(reply)

    def pieces(self, parts: Iterator[bytes]) -> bool:
        """Answer with the reply line made piece by piece (protocol.reply_pieces), pulled as
        the client takes them. True: done (or dropped: the client is gone or was answered)."""
        if not (self.closed or self.replied):
            self.replied = True
            self._conn.send_pieces(parts)
        return True

    def stream(self) -> Stream | None:
        """Answer with a stream of lines instead of one reply (see supervisor.control.stream);
        None if the client is gone or was answered."""
        if self.closed or self.replied:
            return None
        self.replied = True
        return self._conn.start_stream()


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        fn: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return fn


malloc_trim = _find_malloc_trim()
