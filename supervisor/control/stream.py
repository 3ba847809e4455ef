"""A control connection that streams lines (``events --follow``): what the server hands a
handler instead of its one reply (``Responder.stream()``).

Each ``send(doc)`` is one JSON line ``{"stream": true, ...doc}``; ``end(reply)`` sends the one
final reply line (a protocol Reply) and closes once it is out. The client tells the two apart
by the "stream" key (supervisor.control.protocol).

Rules, because a subscriber is a client and the loop must never stall or grow for it:

- A stream holds one connection slot for as long as it lives (the server's caps apply).
- Lines are buffered up to ``cap`` bytes per stream, and all streams and replies together
  stay within the server's ``max_output``. A line that does not fit is dropped and counted; the
  next line that fits is preceded by a ``{"stream": true, "lost": N, "err": "..."}`` marker, so
  a slow reader learns that it missed N lines, and memory never grows past the caps.
- A stream with bytes waiting that takes none of them for ``write_timeout`` seconds is closed
  (its reader has stalled: its slot and buffer come back); while it keeps taking bytes, it lives.
- The peer's bytes after its request are read and dropped up to ``max_request``; past that the
  stream is ended (a stream that stopped reading could not see its peer hang up). The peer's
  hang-up (EOF with POLLHUP) closes the stream at once; a half-close (EOF alone) keeps it.
- ``on_close`` runs exactly once when the stream ends for any reason (e.g. to unsubscribe).
"""

from __future__ import annotations

import json
import select
import selectors
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from supervisor.control.protocol import EOL, USAGE, Reply, encode_reply
from supervisor.loop import Timer

if TYPE_CHECKING:
    from supervisor.control.server import _Conn

STREAM_CAP = 256 * 1024  # bytes buffered per stream


class Stream:
    def __init__(self, conn: _Conn, cap: int = STREAM_CAP) -> None:
        self._conn = conn
        self._server = conn.server
        self._buf = bytearray()
        self.cap = cap
        self.unit = "lines"    # what the lost marker calls them ("events")
        self.lost = 0          # lines dropped since the last marker
        self.lost_total = 0
        self.closed = False
        self._ending = False
        self._stall: Timer | None = None
        self._watching = selectors.EVENT_READ
        self._ignored = 0
        self._half_closed = False
        self._on_close: Callable[[], None] = lambda: None
        loop = self._server.loop
        if conn.watch_reads:
            loop.modify(conn.fd, self._watching, conn.on_event)
        else:
            loop.add_reader(conn.fd, conn.on_event, self._watching)
            conn.watch_reads = True

    # -- what the handler calls ------------------------------------------------------------
    @property
    def on_close(self) -> Callable[[], None]:
        return self._on_close

    @on_close.setter
    def on_close(self, fn: Callable[[], None]) -> None:
        # Set on a stream that already ended (its peer left while the handler was still
        # sending it the past), it runs at once: else an `events --follow` whose client hung
        # up early would stay subscribed to the bus for good, one leak per connection.
        self._on_close = fn
        if self.closed:
            self._on_close = lambda: None
            fn()

    def send(self, doc: Mapping[str, Any]) -> bool:
        """Queue one line; False if it was dropped (over a cap) or the stream is closed."""
        if self.closed or self._ending:
            return False
        try:
            return self._send(doc)
        except Exception as e:  # noqa: BLE001 -- a bug here costs this stream, never its caller
            self._server.log(f"control socket: event stream failed: {type(e).__name__}: {e}\n"
                             f"{traceback.format_exc().rstrip()}")
            self._conn.close()
            return False

    def _send(self, doc: Mapping[str, Any]) -> bool:
        line = json.dumps({"stream": True, **doc}, ensure_ascii=False).encode(
            "utf-8", "surrogateescape") + EOL
        if self.lost:
            marker = json.dumps({"stream": True, "lost": self.lost, "err": (
                f"supervisord: {self.lost} {self.unit} lost (this client did not keep up)\n")}
            ).encode() + EOL
            if not self._fits(len(marker) + len(line)):
                return self._drop()
            self._queue(marker)
            self.lost = 0
        elif not self._fits(len(line)):
            return self._drop()
        self._queue(line)
        self._flush()
        return True

    def end(self, reply: Reply) -> None:
        """The final reply line, then close (it always goes in: it is small)."""
        if self.closed or self._ending:
            return
        self._ending = True
        self._queue(encode_reply(reply))
        self._flush()

    # -- buffer ----------------------------------------------------------------------------
    def _fits(self, n: int) -> bool:
        s = self._server
        return len(self._buf) + n <= self.cap and s.buffered + n <= s.max_output

    def _drop(self) -> bool:
        self.lost += 1
        self.lost_total += 1
        return False

    def _queue(self, data: bytes) -> None:
        self._buf += data
        self._server.buffered += len(data)

    def _flush(self) -> None:
        sent = 0
        while sent < len(self._buf):
            try:
                with memoryview(self._buf) as whole, whole[sent:] as rest:
                    n = self._conn.sock.send(rest)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # EPIPE, ECONNRESET: the client is gone
                self._conn.close()
                return
            sent += n
        if sent:
            del self._buf[:sent]
            self._server.buffered -= sent
            self._cancel_stall()
        if not self._buf:
            if self._ending:
                self._conn.close()
                return
            self._watch(selectors.EVENT_READ)
        else:
            self._watch(selectors.EVENT_READ | selectors.EVENT_WRITE)
            if self._stall is None:
                self._stall = self._server.loop.call_later(self._server.write_timeout,
                                                           self._on_stalled)

    def _watch(self, mask: int) -> None:
        if self._half_closed:
            mask &= ~selectors.EVENT_READ
        if mask == self._watching:
            return
        loop, conn = self._server.loop, self._conn
        if not mask:
            loop.remove(conn.fd)
            conn.watch_reads = False
        elif not self._watching:
            loop.add_reader(conn.fd, conn.on_event, mask)
            conn.watch_reads = True
        else:
            loop.modify(conn.fd, mask, conn.on_event)
        self._watching = mask

    # -- events from the loop (through _Conn.on_event) ---------------------------------------
    def on_event(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if mask & selectors.EVENT_READ and not self.closed:
            self._on_readable()

    def _on_readable(self) -> None:
        try:
            data = self._conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._conn.close()
            return
        if data:
            self._ignored += len(data)
            if self._ignored > self._server.max_request:  # a stream that is not read cannot
                self.end(Reply(USAGE, err=(             # see its peer hang up: end it
                    f"supervisord: bad request: more than {self._server.max_request} bytes "
                    "after the request; stream ended\n")))
            return
        p = select.poll()  # EOF: a half-close (still reading us) or gone (POLLHUP)
        p.register(self._conn.fd, select.POLLIN)
        if any(ev & (select.POLLHUP | select.POLLERR) for _fd, ev in p.poll(0)):
            self._conn.close()
        else:  # half-closed: it still reads; nothing more will come to read
            self._half_closed = True
            self._watch(self._watching)

    def _on_stalled(self) -> None:
        self._stall = None
        self._server.log(f"control socket: an event stream took nothing for "
                         f"{self._server.write_timeout:g} s ({len(self._buf)} bytes waiting); "
                         "closed it")
        self._conn.close()

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def closed_by_conn(self) -> None:
        """_Conn.close() calls this: give the budget back, run on_close once."""
        if self.closed:
            return
        self.closed = True
        self._cancel_stall()
        self._server.buffered -= len(self._buf)
        self._buf = bytearray()
        on_close, self._on_close = self._on_close, lambda: None
        on_close()
