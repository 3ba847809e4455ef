"""One HTTP connection: h11's state machine fed from a non-blocking socket on the loop.

The bounds it keeps are the server's (see supervisor.http.server, which states the rules):
head and body sizes, the request deadline, the write deadline, keep-alive's request count,
pipelined bytes, the shared output budget and a stream's buffer.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import traceback
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

import h11

from supervisor.http.exchange import REASONS, TEXT, Exchange, Headers, Stream
from supervisor.loop import Timer

if TYPE_CHECKING:
    from supervisor.http.server import HttpServer

MAX_QUERY_FIELDS = 32
_ONCE = (b"host", b"authorization", b"content-length", b"content-type", b"origin",
         b"last-event-id")   # at most once
STREAM_SNDBUF = 64 * 1024


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
        self.inflow = 0                # bytes received for this request (and what follows it)
        self.req: h11.Request | None = None
        self.body = bytearray()
        self.exchange: Exchange | None = None
        self.streaming: Callable[[], None] | None = None   # a stream's on_close
        self.timer: Timer | None = None
        self.write_timer: Timer | None = None
        self.close_after = False
        self.refused = False         # closing after an error reply: more may be on its way
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
        self.inflow += len(data)
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
                if _length_and_chunked(event):
                    # RFC 9112 6.3: a proxy in front that reads the Content-Length while we
                    # read the chunks would see another request in the body (smuggling)
                    self._error(400, "both Content-Length and Transfer-Encoding: send one")
                    return
                length = _content_length(event)
                if length is not None and length > self.server.max_body:
                    self._error(413, f"body larger than {self.server.max_body} bytes")
                    return
            elif isinstance(event, h11.Data):
                self.body += event.data
                if self.inflow > self.server.max_inflow:
                    # chunk extensions and framing are not body: 1-byte chunks with 16 KiB of
                    # extension each made a 64 KiB body cost 1 GiB of parsing
                    self._error(413, f"request larger than {self.server.max_inflow} bytes "
                                     "with its framing")
                    return
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
        problem = self._parse(req, ex)
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
            if not ex.answered:
                ex.text(500, f"internal error: {type(e).__name__}: {e} (see "
                             f"{self.server.log_where})\n")
            elif self.h11.our_state is h11.SEND_RESPONSE:
                self.close()          # it failed while answering: nothing went out

    def _parse(self, req: h11.Request, ex: Exchange) -> tuple[int, str] | None:
        """Fill ex from req; (status, why) when the request is refused before routing."""
        for name, value in req.headers:
            if name in ex.headers and name in _ONCE:
                return 400, f"repeated {name.decode()} header"
            ex.headers[name] = value
        target = req.target
        if not target.startswith(b"/"):
            return 400, "the request target must be an absolute path (e.g. /metrics)"
        raw_path, _, raw_query = target.partition(b"?")
        try:
            path = urllib.parse.unquote_to_bytes(raw_path).decode("utf-8")
            query = urllib.parse.parse_qsl(raw_query.decode("ascii"), keep_blank_values=True,
                                           max_num_fields=MAX_QUERY_FIELDS)
        except (UnicodeDecodeError, ValueError):
            return 400, "bad path or query (percent-encoded UTF-8; at most 32 query fields)"
        segs = path.split("/")[1:]
        if "\0" in path or any(s in (".", "..") for s in segs) or "" in segs[:-1]:
            return 400, "bad path: no '.', '..', empty segments or NUL"
        ex.path = path
        for k, v in query:
            if k in ex.query:   # which one counts differs between a proxy and us: neither
                return 400, f"repeated query parameter {k!r}"
            ex.query[k] = v
        if not self.server.host_ok(ex.headers.get(b"host")):
            return 421, ("this endpoint answers only requests for a loopback host (Host: "
                         "localhost, 127.0.0.1 or [::1]); a page that points another name at "
                         "this address gets nothing")
        return None

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
        # Called from routes and from deferred replies (a verb that waited): whatever goes
        # wrong here must cost this connection only, never the caller (the runtime's waiter).
        try:
            data = self._head(ex, status, hs)
            if ex.method != "HEAD":
                data += self.h11.send(h11.Data(data=body))
            data += self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as e:
            server.log(f"http: cannot send the reply to {ex.method} {ex.path}: {e}")
            self.close()
            return
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
        self._send_event(h11.Data(data=data))
        return not self.closed

    def stream_end(self) -> None:
        self._send_event(h11.EndOfMessage())

    def _send_event(self, event: h11.Data | h11.EndOfMessage) -> None:
        """A piece of a stream (sent by whoever feeds it: never raises into them)."""
        try:
            data = self.h11.send(event)
        except h11.LocalProtocolError as e:
            self.server.log(f"http: cannot send on a stream: {e}")
            self.close()
            return
        self._queue(data or b"")

    def _error(self, status: int, why: str) -> None:
        """Refuse what h11 could not parse or we will not take, then close."""
        self.close_after = self.refused = True
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
        self.inflow = len(self.h11.trailing_data[0])   # what is buffered is the next request's
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
        # after a refusal (413, 400) what the client still sends would reset it before it
        # read the reply: the socket lingers, bounded (control/linger.py)
        self.server.linger.close(self.sock, self.refused)
        on_close, self.streaming = self.streaming, None
        if on_close is not None:
            on_close()


def _length_and_chunked(req: h11.Request) -> bool:
    names = {name for name, _v in req.headers}
    return b"content-length" in names and b"transfer-encoding" in names


def _content_length(req: h11.Request) -> int | None:
    for name, value in req.headers:
        if name == b"content-length":
            return int(value)        # h11 checked that it is a number
    return None
