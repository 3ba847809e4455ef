"""The control socket: a Unix stream socket on the daemon's Loop, checked with SO_PEERCRED.

What goes over it is supervisor.control.protocol: one request line in, one reply line out, then
the connection is closed (or, for a handler that asks for it, a bounded stream of lines:
supervisor.control.stream). The handler may answer at once or much later (``start`` waits for
RUNNING): it receives a :class:`Responder` and calls it when it is done.

Rules this module keeps, because the daemon's loop must never stall or die for a client:

- every socket is non-blocking; replies are written from a buffer as the client reads them,
  through a memoryview (a big reply is never copied), and the bytes buffered for all clients
  together are capped (``max_output``): a big reply that does not fit while others wait is
  replaced by a short "busy" error, so clients that never read cannot grow the daemon;
- a reply in pieces (``Responder.pieces``, e.g. a batch of status rows each) gets its next
  piece made once the last is all in the kernel, one per loop turn: one small piece held per
  connection, other clients served in between; a piece that raises cuts the reply (logged);
- every connection has a deadline: the request within ``read_timeout``, the reply drained within
  ``write_timeout``; past it the connection is closed (with an error reply when one still fits);
- the number of connections is capped; beyond the cap a connection is accepted and closed at once.
  Refused peers (a uid not allowed) get at most an eighth of the slots, and every slot comes back
  at the read or write deadline, so no peer locks the others out for longer than that;
- nothing a client sends can raise out of a callback: bad input gets a code-2 reply, a handler
  that raises gets a code-1 reply and is logged with its traceback through ``log``, which the
  reply names (``log_where``);
- bytes sent after the request are read and dropped, up to ``max_request``; then the connection
  is no longer read (the peer's writes block, the daemon's loop does not spin on them);
- a connection closed with bytes unread (or cut off in a request too large) lingers, bounded
  (supervisor.control.linger): its client reads the reply and EOF, not ECONNRESET;
- a client that goes away before its (deferred) reply marks the responder ``closed``; the reply is
  then dropped silently.

The socket file is made by supervisor.control.sockfile; ``close()`` unlinks it only if it is
still ours.
All of this runs on the loop's thread; the handler and responders must be called from it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import selectors
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from supervisor.control.linger import Linger
from supervisor.control.protocol import (
    EOL,
    ERROR,
    MAX_REQUEST,
    READ_TIMEOUT,
    USAGE,
    WRITE_TIMEOUT,
    BadRequest,
    Reply,
    Request,
    decode_request,
    encode_reply,
)
from supervisor.control.responder import Responder, malloc_trim
from supervisor.control.sockfile import (
    ServerError,
    SocketInUseError,
    create_socket,
    peer_of,
    resolve_group,
)
from supervisor.control.stream import Stream
from supervisor.loop import Loop, Timer

__all__ = ["ControlServer", "Handler", "Responder", "ServerError", "SocketInUseError"]

MAX_CONNECTIONS = 256
MAX_OUTPUT = 8 * 1024 * 1024  # bytes of replies buffered for all clients together
_BIG_REPLY = 1024 * 1024  # releasing one this large hands freed heap back to the OS
# Replies up to this size always go out (the cap on connections bounds them): the answer to a
# start or stop that was done must never be swapped for "busy"; only big reads (status) can be.
_SMALL_REPLY = 64 * 1024
_ACCEPT_BATCH = 64
# A client closed on at once (the table full) is told to see the log: it says why, at most
# once in this many seconds (a flood must not become a flood of log lines).
_FULL_LOG_EVERY = 10.0


Handler = Callable[[Request, Responder], None]

# Connection states
_READING, _WAITING, _WRITING, _CLOSED, _STREAMING = range(5)


class _Conn:
    """One client connection: read one line, hand it over, write one reply, close."""

    def __init__(self, server: ControlServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.out: memoryview | None = None  # the reply; self.sent bytes of it are gone
        self.sent = 0
        self.held = 0  # bytes of the reply counted in server.buffered
        self.ignored = 0  # bytes read after the request line
        self.state = _READING
        self.watch_reads = True
        self.timer: Timer | None = None
        self.responder = Responder(self)
        self.refused_uid: int | None = None  # a peer we will refuse once its request is in
        self.peer = -1                       # the peer's uid (SO_PEERCRED)
        self.stream: Stream | None = None    # set when the handler answers with a stream
        self.parts: Iterator[bytes] | None = None  # the rest of a reply given in pieces
        self.cut = False          # the request was too large: more of it may be on the way

    def start_stream(self) -> Stream:
        self.state = _STREAMING   # the Stream watches the socket from now on
        self.stream = Stream(self)
        return self.stream

    # -- events -------------------------------------------------------------------------------
    def on_event(self, mask: int) -> None:
        try:
            if self.stream is not None:
                self.stream.on_event(mask)
            elif self.state == _WRITING and mask & selectors.EVENT_WRITE:
                self._flush()
            elif mask & selectors.EVENT_READ and self.state in (_READING, _WAITING):
                self._on_readable()
        except Exception as e:  # noqa: BLE001 -- a bug here must cost one connection, not the daemon
            self.server.log(f"control socket: connection failed: {type(e).__name__}: {e}\n"
                            f"{traceback.format_exc().rstrip()}")
            self.close()

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if self.state == _WAITING:
            if not data:
                self._on_eof_while_waiting()
                return
            self.ignored += len(data)  # bytes after the request line are ignored, up to a point
            if self.ignored > self.server.max_request:
                self._stop_reading()
            return
        if not data:
            if self.inbuf.strip():
                self._dispatch(bytes(self.inbuf))  # the client half-closed after its request
                self._stop_reading()
            else:
                self.close()
            return
        self.inbuf += data
        nl = self.inbuf.find(EOL)
        if nl < 0 and len(self.inbuf) <= self.server.max_request:
            return
        if nl < 0 or nl > self.server.max_request:
            self.cut = True
            self.send_error(USAGE, f"request too large (more than {self.server.max_request} bytes)")
            return
        line = bytes(self.inbuf[:nl])
        self.inbuf.clear()
        self._dispatch(line)

    def _on_eof_while_waiting(self) -> None:
        # EOF is either a half-close (the client still waits for the reply) or the client is
        # gone. A Unix socket whose peer closed both directions polls POLLHUP; tell them apart.
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        events = p.poll(0)
        if any(ev & (select.POLLHUP | select.POLLERR) for _fd, ev in events):
            self.close()
        else:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self.watch_reads and self.state == _WAITING:
            self.watch_reads = False
            self.server.loop.remove(self.fd)

    # -- request ------------------------------------------------------------------------------
    def _dispatch(self, line: bytes) -> None:
        self._cancel_timer()
        if self.refused_uid is not None:
            self.send_error(ERROR, "")
            return
        try:
            req = decode_request(line)
        except BadRequest as e:
            self.send_error(USAGE, str(e))
            return
        self.state = _WAITING
        try:
            self.server.handler(req, self.responder)
        except Exception as e:  # noqa: BLE001 -- a handler bug must not take the daemon down
            cmd = req.cmd
            self.server.log(f"control socket: handler failed on {cmd!r}: {type(e).__name__}: {e}"
                            f"\n{traceback.format_exc().rstrip()}")
            self.responder(
                Reply(
                    ERROR,
                    err=f"supervisord: internal error while handling {cmd!r}: "
                    f"{type(e).__name__}: {e} (see {self.server.log_where})\n",
                )
            )

    # -- reply --------------------------------------------------------------------------------
    def send_error(self, code: int, message: str) -> None:
        self.responder.replied = True
        if self.refused_uid is not None:  # tell a refused peer nothing else
            uid = self.refused_uid
            err = f"permission denied: uid {uid} is not allowed on this socket\n"
            self.send_reply(Reply(ERROR, err=err))
        else:
            self.send_reply(Reply(code, err=f"supervisord: bad request: {message}\n"))

    def send_reply(self, reply: Reply | Mapping[str, Any]) -> None:
        if self.state in (_WRITING, _CLOSED):
            return
        try:
            data = encode_reply(reply)
        except (TypeError, ValueError, RecursionError) as e:
            self.server.log(f"control socket: reply not serializable: {e}")
            data = encode_reply(
                Reply(ERROR, err=f"supervisord: internal error: reply not serializable ({e})\n")
            )
        server = self.server
        if (len(data) > _SMALL_REPLY and server.buffered
                and server.buffered + len(data) > server.max_output):
            server.log(f"control socket: {server.buffered} bytes of replies wait for clients "
                       f"that do not take them; refused a reply of {len(data)} bytes")
            data = encode_reply(Reply(ERROR, err="supervisord: busy: other clients have not "
                                      "taken their replies yet; try again\n"))
        self._begin_write(data)

    def send_pieces(self, parts: Iterator[bytes]) -> None:
        if self.state not in (_WRITING, _CLOSED):
            self.parts = parts
            self._begin_write(b"")

    def _begin_write(self, data: bytes) -> None:
        self.out = memoryview(data)
        self.held = len(data)
        self.server.buffered += self.held
        self.state = _WRITING
        self._cancel_timer()
        self.timer = self.server.loop.call_later(self.server.write_timeout, self.close)
        self._flush()
        if self.state == _WRITING:
            if self.watch_reads:
                self.server.loop.modify(self.fd, selectors.EVENT_WRITE, self.on_event)
            else:
                self.server.loop.add_reader(self.fd, self.on_event, selectors.EVENT_WRITE)
                self.watch_reads = True

    def _flush(self) -> None:
        made = False
        while True:
            out = self.out
            while out is not None and self.sent < len(out):
                try:
                    n = self.sock.send(out[self.sent:])
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:  # EPIPE, ECONNRESET: the client is gone
                    self.close()
                    return
                self.sent += n
                self.held -= n  # what the kernel took no longer counts against max_output
                self.server.buffered -= n
            if self.parts is None or not self._next_piece():
                self.close()
                return
            if made:        # one piece per loop turn (the socket stays writable: back soon)
                return
            made = True

    def _next_piece(self) -> bool:
        """The next piece into self.out; False when none (all sent, or it failed: logged)."""
        try:
            piece = next(self.parts)  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 -- a bug in a piece costs this reply only
            self.parts = None
            if isinstance(e, StopIteration):
                return False
            self.server.log(f"control socket: reply failed after {self.sent} bytes: "
                            f"{type(e).__name__}: {e}\n{traceback.format_exc().rstrip()}")
            return False
        if self.out is not None:
            self.out.release()
        self.out, self.sent, self.held = memoryview(piece), 0, len(piece)
        self.server.buffered += len(piece)
        return True

    def _release(self) -> None:
        """Drop the reply buffer (sent or not) and give its budget back."""
        if self.out is None:
            return
        size = len(self.out)
        self.out.release()
        self.out = None
        self.server.buffered -= self.held
        self.held = 0
        if size >= _BIG_REPLY:
            self.server.trim_soon()

    # -- lifetime -----------------------------------------------------------------------------
    def on_read_timeout(self) -> None:
        self.timer = None
        if self.state == _READING:
            self.send_error(USAGE, f"no complete request within {self.server.read_timeout:g} s")

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self.responder.closed = True
        self._cancel_timer()
        self._release()
        self.parts = None
        if self.stream is not None:
            self.stream.closed_by_conn()
        self.server._forget(self)
        if self.watch_reads:
            self.server.loop.remove(self.fd)
        self.server.linger.close(self.sock, self.cut)


class ControlServer:
    """Serve the control protocol on a Unix socket at ``path`` with the daemon's Loop.

    ``handler(request, responder)`` gets every well-formed request (decode_request accepted it)
    from an allowed peer; it calls ``responder(reply)`` now or later. Allowed peers: uid 0, the
    daemon's euid, and (when ``group`` is set) members of that group by primary or supplementary
    gid. Raises ServerError (SocketInUseError when a live daemon answers on ``path``).

    ``log(text)`` receives every server-side failure (a handler's, with its traceback); replies
    that report one tell the client to see ``log_where``.
    """

    def __init__(
        self,
        loop: Loop,
        path: str,
        handler: Handler,
        mode: int = 0o600,
        group: str | None = None,
        *,
        read_timeout: float = READ_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_request: int = MAX_REQUEST,
        max_connections: int = MAX_CONNECTIONS,
        max_output: int = MAX_OUTPUT,
        log: Callable[[str], None] | None = None,
        log_where: str = "the daemon log",
    ) -> None:
        self.loop = loop
        self.path = path
        self.handler = handler
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_request = max_request
        self.max_connections = max_connections
        self.max_refused = max(1, max_connections // 8)
        self.max_output = max_output
        self.buffered = 0  # bytes of replies not yet taken, all connections together
        self.log: Callable[[str], None] = log or (lambda _msg: None)
        self.log_where = log_where
        self._trim: Timer | None = None
        self.gid: int | None = resolve_group(group) if group is not None else None
        self._conns: dict[int, _Conn] = {}
        self.linger = Linger(loop)
        self._paused: Timer | None = None
        self._full_logged = -_FULL_LOG_EVERY  # monotonic time of the last "full" log line
        self._closed = False
        self._sock, self._ident = create_socket(path, mode, self.gid)
        self.loop.add_reader(self._sock.fileno(), self._on_accept)

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def lingering(self) -> int:
        return len(self.linger)

    # -- accepting ----------------------------------------------------------------------------
    def _on_accept(self, _mask: int) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(e)
                else:
                    self.log(f"control socket: accept failed: {e}")
                return
            self._on_connection(sock)

    def _pause_accepting(self, e: OSError) -> None:
        self.log(f"control socket: accept failed ({e}); pausing for 0.2 s")
        self._paused = self.loop.pause_reader(self._sock.fileno(), self._on_accept, 0.2)

    def _on_connection(self, sock: socket.socket) -> None:
        if len(self._conns) >= self.max_connections:
            sock.close()
            if (now := time.monotonic()) - self._full_logged >= _FULL_LOG_EVERY:
                self._full_logged = now
                self.log(f"control socket: {self.max_connections} connections open, the most; "
                         "new ones are closed unanswered until slots free up (a client that "
                         f"sends no request is dropped after {self.read_timeout:g} s)")
            return
        refused_uid, peer = peer_of(sock, self.gid)
        if refused_uid is not None and self._refused_count() >= self.max_refused:
            sock.close()
            return
        # Rule: a peer that is neither root nor the daemon's uid (a socket_group member) may
        # hold at most an eighth of the slots, and never the last eighth, kept for root and
        # the daemon's uid: it can wait on as many slow starts as it likes, and still cannot
        # lock anyone out.
        if refused_uid is None and peer not in (0, os.geteuid()) and (
                len(self._conns) >= self.max_connections - self.max_refused
                or sum(1 for c in self._conns.values() if c.peer == peer) >= self.max_refused):
            sock.close()
            return
        sock.setblocking(False)
        conn = _Conn(self, sock)
        self._conns[conn.fd] = conn
        self.loop.add_reader(conn.fd, conn.on_event)
        # A refused peer still gets to send its request (never parsed): replying and closing
        # before it is in would make the peer's send fail (EPIPE/ECONNRESET) instead of letting
        # it read why.
        conn.refused_uid = refused_uid
        conn.peer = peer
        conn.timer = self.loop.call_later(self.read_timeout, conn.on_read_timeout)
        # The request is usually in already (clients send right after connect): read it now
        # rather than a loop turn later, which during a mass start is a spawn slice later.
        conn.on_event(selectors.EVENT_READ)

    def _refused_count(self) -> int:
        return sum(1 for c in self._conns.values() if c.refused_uid is not None)

    def _forget(self, conn: _Conn) -> None:
        self._conns.pop(conn.fd, None)

    def trim_soon(self) -> None:
        """Hand freed heap back to the OS once the loop is done closing: glibc keeps the memory
        of big freed replies otherwise, and 100 clients that never read would cost it for good."""
        if self._trim is None and not self._closed:
            self._trim = self.loop.call_later(0, self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        if malloc_trim is not None:
            malloc_trim(0)

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening, close every connection, unlink the socket file if it is still ours."""
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        if self._trim is not None:
            self._trim.cancel()
        self.loop.remove(self._sock.fileno())
        for conn in list(self._conns.values()):
            conn.close()
        self.linger.close_all()
        self._sock.close()
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._ident:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
