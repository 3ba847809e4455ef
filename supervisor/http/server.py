"""The HTTP server: h11 (a sans-I/O HTTP/1.1 state machine) on the daemon's own Loop.

No thread and no tick: the listener and every connection are fds on the loop, and each
connection's deadline is one loop timer. h11 parses; this module only moves bytes and keeps the
bounds, because an HTTP client is as untrusted as any control-socket peer:

- headers: at most ``max_header`` bytes for the request line and headers (h11's
  max_incomplete_event_size); more is 431. Body: at most ``max_body`` bytes; more is 413;
- a whole request must arrive within ``request_timeout`` of the connection opening (or of the
  previous response, on a kept-alive connection): a slow client (slowloris) gets 408 and is
  closed; a reply must be taken within ``write_timeout``, else the connection is closed (a
  stream's client must take some of its bytes every ``write_timeout``);
- at most ``max_connections`` connections; past it a connection is accepted and closed at once;
  at most ``max_requests`` requests per connection (then ``Connection: close``); pipelined
  bytes beyond ``max_header`` are not read until the reply is out;
- the replies buffered for all connections together are capped (``max_output``): a reply that
  does not fit is swapped for a 503; a stream more than ``max_stream_buffer`` behind is closed;
- repeated Host or Authorization headers, a target that is not an absolute path, a path with
  ``.``/``..``/empty segments, NUL or bad percent-encoding are 400 before any route sees them;
  on a loopback address the Host header must name a loopback host (a web page that rebinds a
  DNS name to 127.0.0.1 cannot read the API): 421 otherwise;
- a route that raises costs its request a 500 and a log line, never the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import h11

from supervisor.control.sockfile import create_socket
from supervisor.http.address import HttpAddress
from supervisor.http.exchange import REASONS, TEXT, Exchange, Headers, Router, Stream
from supervisor.http.request import content_length, loopback_host, parse_request
from supervisor.loop import Loop, Timer

MAX_HEADER = 16 * 1024
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64
MAX_REQUESTS = 100
MAX_OUTPUT = 32 * 1024 * 1024
MAX_STREAM_BUFFER = 1024 * 1024
STREAM_SNDBUF = 64 * 1024
REQUEST_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0


class HttpError(ValueError):
    """The endpoint cannot be opened; str() says where and why."""


class HttpConn:
    def __init__(self, server: HttpServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_header)
        self.closed = False
        self.reading = True
        self.out = bytearray()
        self.held = 0                  # bytes of self.out counted in server.buffered
        self.requests = 0
        self.req: h11.Request | None = None
        self.body = bytearray()
        self.exchange: Exchange | None = None
        self.streaming: Callable[[], None] | None = None   # a stream's on_close
        self.timer: Timer | None = None
        self.write_timer: Timer | None = None
        self.close_after = False
        self._in_process = False
        self._arm(self.server.request_timeout, self._on_request_timeout)

    # -- reading ----------------------------------------------------------------------------
    def on_event(self, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush()
            if mask & selectors.EVENT_READ and not self.closed:
                self._on_readable()
        except Exception as e:  # noqa: BLE001 -- a bug here costs one connection, not the daemon
            self.server.log(f"http: connection failed: {type(e).__name__}: {e}\n"
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
        if not data and (self.exchange is not None or self.streaming is not None):
            self.close()              # the client went away while we worked on its reply
            return
        try:
            self.h11.receive_data(data)
        except RuntimeError:          # data after the close: drop the connection
            self.close()
            return
        self._process()

    def _process(self) -> None:
        # Not re-entered: a reply flushed at once starts the next cycle from inside the loop
        # below, which then goes on with a pipelined request (no recursion per request).
        if self._in_process:
            return
        self._in_process = True
        try:
            self._process_events()
        finally:
            self._in_process = False

    def _process_events(self) -> None:
        while not self.closed and self.exchange is None and self.streaming is None:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint
                if status == 400 and len(self.h11.trailing_data[0]) > self.server.max_header:
                    status = 431
                self._error(status, f"bad request: {e}")
                return
            if event is h11.NEED_DATA:
                if len(self.h11.trailing_data[0]) > self.server.max_header + self.server.max_body:
                    self._error(413, "request too large")
                return
            if event is h11.PAUSED:
                self._pause_reading()
                return
            if isinstance(event, h11.Request):
                self.req, self.body = event, bytearray()
                # h11 bounds only what is still incomplete: a whole head in one read can be
                # bigger, so it is measured here as well
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if size > self.server.max_header:
                    self._error(431, f"request head larger than {self.server.max_header} bytes")
                    return
                length = content_length(event)
                if length is not None and length > self.server.max_body:
                    self._error(413, f"body larger than {self.server.max_body} bytes")
                    return
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > self.server.max_body:
                    self._error(413, f"body larger than {self.server.max_body} bytes")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                return
        if self.exchange is not None and len(self.h11.trailing_data[0]) > self.server.max_header:
            self._pause_reading()      # pipelined bytes wait until the reply is out

    def _pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self._watch()

    # -- a request --------------------------------------------------------------------------
    def _dispatch(self) -> None:
        req = self.req
        assert req is not None
        self._cancel(self.timer)
        self.timer = None
        self.requests += 1
        if self.requests >= self.server.max_requests:
            self.close_after = True
        method = req.method.decode("ascii", "replace")
        ex = Exchange(self, method, "", {}, {}, bytes(self.body))
        self.exchange = ex
        problem = parse_request(req, ex, self.server.host_ok)
        if problem is not None:
            ex.text(problem[0], problem[1] + "\n")
            return
        fn, params, pattern, allowed = self.server.router.match(method, ex.path)
        ex.params, ex.route = params, pattern
        if fn is None:
            if allowed:
                ex.text(405, f"method {method} not allowed on {ex.path}; allowed: "
                             f"{', '.join(allowed)}\n",
                        [(b"allow", ", ".join(allowed).encode())])
            else:
                ex.text(404, f"no such path: {ex.path}; see /api/v1/openapi.json\n")
            return
        try:
            fn(ex)
        except Exception as e:  # noqa: BLE001 -- a route bug must not take the daemon down
            self.server.log(f"http: {method} {ex.path} failed: {type(e).__name__}: {e}\n"
                            f"{traceback.format_exc().rstrip()}")
            ex.text(500, f"internal error: {type(e).__name__}: {e} (see "
                         f"{self.server.log_where})\n")

    # -- answering --------------------------------------------------------------------------
    def _head(self, ex: Exchange, status: int, headers: Headers) -> bytes:
        hs = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
              *headers]
        if self.close_after:
            hs.append((b"connection", b"close"))
        self.server.requests[(ex.route, status)] += 1
        return self.h11.send(h11.Response(status_code=status, headers=hs,
                                          reason=REASONS.get(status, "").encode()))

    def respond(self, ex: Exchange, status: int, headers: Headers, body: bytes) -> None:
        if self.closed or ex is not self.exchange:
            return
        server = self.server
        if len(body) > 65536 and server.buffered + len(body) > server.max_output:
            server.log(f"http: {server.buffered} bytes of replies wait for clients; refused a "
                       f"reply of {len(body)} bytes")
            status, headers = 503, [(b"content-type", TEXT)]
            body = b"busy: other clients have not taken their replies yet; try again\n"
        hs = [*headers, (b"content-length", str(len(body)).encode())]
        data = self._head(ex, status, hs)
        if ex.method != "HEAD":
            data += self.h11.send(h11.Data(data=body))
        data += self.h11.send(h11.EndOfMessage())
        self._queue(data)

    def start_stream(self, ex: Exchange, status: int, content_type: bytes,
                     on_close: Callable[[], None]) -> Stream:
        self.close_after = True      # a stream ends its connection
        self.streaming = on_close
        # the kernel's send buffer autotunes to megabytes for a reader that never reads:
        # a stream's waiting bytes stay in ours, where the caps and the stall timeout see them
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        self._queue(self._head(ex, status, [(b"content-type", content_type)]))
        return Stream(self)

    def stream_data(self, data: bytes) -> bool:
        if len(self.out) + len(data) > self.server.max_stream_buffer:
            self.server.log("http: a stream's client fell behind; closing it")
            self.close()
            return False
        self._queue(self.h11.send(h11.Data(data=data)) or b"")
        return not self.closed

    def stream_end(self) -> None:
        self._queue(self.h11.send(h11.EndOfMessage()) or b"")

    def _error(self, status: int, why: str) -> None:
        """Refuse what h11 could not parse or we will not take, then close."""
        self.close_after = True
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or self.exchange is not None:
            self.close()
            return
        ex = Exchange(self, "GET", "", {}, {}, b"")
        self.exchange = ex
        hs = [(b"content-type", TEXT), (b"connection", b"close")]
        body = f"{why}\n".encode()
        try:
            data = self.h11.send(h11.Response(status_code=status, headers=[
                *hs, (b"content-length", str(len(body)).encode())],
                reason=REASONS.get(status, "").encode()))
            data += self.h11.send(h11.Data(data=body)) + self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            data = (f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nconnection: close\r\n"
                    f"content-length: {len(body)}\r\n\r\n").encode() + body
        self.server.requests[("other", status)] += 1
        self._queue(data)

    # -- writing ----------------------------------------------------------------------------
    def _queue(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.out += data
        self.held += len(data)
        self.server.buffered += len(data)
        if self.write_timer is None:
            self.write_timer = self.server.loop.call_later(self.server.write_timeout,
                                                           self._on_write_timeout)
        self._flush()

    def _flush(self) -> None:
        sent = 0
        while self.out and not self.closed:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            del self.out[:n]
            self.held -= n
            self.server.buffered -= n
            sent += n
        if self.closed:
            return
        if not self.out:
            self._cancel(self.write_timer)
            self.write_timer = None
            if self.exchange is not None and self.h11.our_state in (h11.DONE, h11.MUST_CLOSE):
                self._next_cycle()
                return
        elif sent and self.streaming is not None:
            # a stream lives while its client takes bytes: it has stalled only when it took
            # nothing for write_timeout (a reply must be taken whole within it)
            self._cancel(self.write_timer)
            self.write_timer = self.server.loop.call_later(self.server.write_timeout,
                                                           self._on_write_timeout)
        self._watch()

    def _next_cycle(self) -> None:
        if self.close_after or self.h11.our_state is not h11.DONE or (
                self.h11.their_state is not h11.DONE):
            self.close()
            return
        self.h11.start_next_cycle()
        self.exchange, self.req = None, None
        self.reading = True
        self._arm(self.server.request_timeout, self._on_request_timeout)
        self._watch()
        self._process()              # a pipelined request may be there already

    def _watch(self) -> None:
        if self.closed:
            return
        events = (selectors.EVENT_READ if self.reading else 0) | (
            selectors.EVENT_WRITE if self.out else 0)
        self.server.watch(self, events)

    # -- deadlines and closing --------------------------------------------------------------
    def _arm(self, delay: float, fn: Callable[[], None]) -> None:
        self._cancel(self.timer)
        self.timer = self.server.loop.call_later(delay, fn)

    @staticmethod
    def _cancel(timer: Timer | None) -> None:
        if timer is not None:
            timer.cancel()

    def _on_request_timeout(self) -> None:
        self.timer = None
        if self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]:
            self.close()             # an idle kept-alive connection: just close it
        else:
            self._error(408, f"no complete request within {self.server.request_timeout:g} s")

    def _on_write_timeout(self) -> None:
        self.write_timer = None
        if self.streaming is not None:
            self.server.log(f"http: a stream's client took nothing for "
                            f"{self.server.write_timeout:g} s ({len(self.out)} bytes waiting); "
                            "closed it")
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel(self.timer)
        self._cancel(self.write_timer)
        self.server.buffered -= self.held
        self.held = 0
        self.out = bytearray()
        self.server.forget(self)
        self.sock.close()
        on_close, self.streaming = self.streaming, None
        if on_close is not None:
            on_close()


class HttpServer:
    """Serve ``router`` on ``address`` with the daemon's loop. Raises HttpError when the address
    cannot be bound. ``log(text)`` gets every failure; ``requests`` counts (route, status)."""

    def __init__(self, loop: Loop, address: HttpAddress, router: Router, *,
                 unix_mode: int = 0o600, unix_gid: int | None = None,
                 log: Callable[[str], None] | None = None, log_where: str = "the daemon log",
                 **limits: Any) -> None:
        self.loop = loop
        self.address = address
        self.router = router
        self.log: Callable[[str], None] = log or (lambda _m: None)
        self.log_where = log_where
        self.max_header = int(limits.get("max_header", MAX_HEADER))
        self.max_body = int(limits.get("max_body", MAX_BODY))
        self.max_connections = int(limits.get("max_connections", MAX_CONNECTIONS))
        self.max_requests = int(limits.get("max_requests", MAX_REQUESTS))
        self.max_output = int(limits.get("max_output", MAX_OUTPUT))
        self.max_stream_buffer = int(limits.get("max_stream_buffer", MAX_STREAM_BUFFER))
        self.request_timeout = float(limits.get("request_timeout", REQUEST_TIMEOUT))
        self.write_timeout = float(limits.get("write_timeout", WRITE_TIMEOUT))
        self.buffered = 0
        self.requests: Counter[tuple[str, int]] = Counter()
        self.conns: dict[int, HttpConn] = {}
        self._watched: dict[int, int] = {}
        self._ident: tuple[int, int] | None = None
        self._paused: Timer | None = None
        self._closed = False
        self.sock = self._listen(unix_mode, unix_gid)
        self.loop.add_reader(self.sock.fileno(), self._on_accept)

    def _listen(self, mode: int, gid: int | None) -> socket.socket:
        a = self.address
        try:
            if a.is_unix:
                sock, self._ident = create_socket(a.path, mode, gid)
            else:
                family = socket.AF_INET6 if a.family_v6 else socket.AF_INET
                sock = socket.create_server((a.host, a.port), family=family, backlog=128)
        except OSError as e:
            raise HttpError(f"http {a}: cannot listen: {e.strerror or e}") from None
        except Exception as e:  # noqa: BLE001 -- ServerError and the like: say where
            raise HttpError(f"http {a}: cannot listen: {e}") from None
        sock.setblocking(False)
        return sock

    @property
    def bound(self) -> str:
        """Where it listens (the port the kernel chose, for port 0)."""
        if self.address.is_unix:
            return self.address.path
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def host_ok(self, host: bytes | None) -> bool:
        if self.address.is_unix or not self.address.loopback:
            return True
        # no Host at all: HTTP/1.0 only (h11 requires it in 1.1); browsers always send one
        return host is None or loopback_host(host)

    # -- connections ------------------------------------------------------------------------
    def _on_accept(self, _mask: int) -> None:
        for _ in range(64):
            try:
                sock, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(e)
                return
            if len(self.conns) >= self.max_connections:
                sock.close()
                continue
            sock.setblocking(False)
            conn = HttpConn(self, sock)
            self.conns[conn.fd] = conn
            self.watch(conn, selectors.EVENT_READ)

    def _pause_accepting(self, e: OSError) -> None:
        self.log(f"http: accept failed ({e}); pausing for 0.2 s")
        self.loop.remove(self.sock.fileno())

        def resume() -> None:
            self._paused = None
            if not self._closed:
                self.loop.add_reader(self.sock.fileno(), self._on_accept)

        self._paused = self.loop.call_later(0.2, resume)

    def watch(self, conn: HttpConn, events: int) -> None:
        had = self._watched.get(conn.fd, 0)
        if events == had:
            return
        if not events:
            self.loop.remove(conn.fd)
            self._watched.pop(conn.fd, None)
        elif had:
            self.loop.modify(conn.fd, events, conn.on_event)
            self._watched[conn.fd] = events
        else:
            self.loop.add_reader(conn.fd, conn.on_event, events)
            self._watched[conn.fd] = events

    def forget(self, conn: HttpConn) -> None:
        if self._watched.pop(conn.fd, None):
            self.loop.remove(conn.fd)
        self.conns.pop(conn.fd, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        self.loop.remove(self.sock.fileno())
        for conn in list(self.conns.values()):
            conn.close()
        self.sock.close()
        if self._ident is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.address.path)
                if (st.st_dev, st.st_ino) == self._ident:
                    os.unlink(self.address.path)
