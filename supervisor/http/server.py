"""The HTTP server: h11 (a sans-I/O HTTP/1.1 state machine) on the daemon's own Loop.

No thread and no tick: the listener and every connection are fds on the loop, and each
connection's deadline is one loop timer. h11 parses; conn.py moves the bytes, and both keep the
bounds, because an HTTP client is as untrusted as any control-socket peer:

- headers: at most ``max_header`` bytes for the request line and headers (h11's
  max_incomplete_event_size); more is 431. Body: at most ``max_body`` bytes, and at most
  ``max_inflow`` bytes received for it with its chunk framing; more is 413. Both
  Content-Length and Transfer-Encoding is 400 (a proxy in front could read the other one);
- a whole request must arrive within ``request_timeout`` of the connection opening (or of the
  previous response, on a kept-alive connection): a slow client (slowloris) gets 408 and is
  closed; a reply must be taken within ``write_timeout``, else the connection is closed (a
  stream's client must take some of its bytes every ``write_timeout``; a stream's kernel send
  buffer is fixed at 64 KiB, so what waits for a slow reader is in the daemon's counts);
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
import ipaddress
import os
import selectors
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

from supervisor.control.linger import Linger
from supervisor.control.sockfile import create_socket
from supervisor.http.address import HttpAddress
from supervisor.http.conn import HttpConn
from supervisor.http.exchange import Router
from supervisor.loop import Loop, Timer
from supervisor.safefs import trusted_dir

MAX_HEADER = 16 * 1024
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64
MAX_REQUESTS = 100
MAX_OUTPUT = 32 * 1024 * 1024
MAX_STREAM_BUFFER = 1024 * 1024
REQUEST_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0


class HttpError(ValueError):
    """The endpoint cannot be opened; str() says where and why."""


_LOOPBACK_NAMES = {"localhost"}


def _loopback_host(host: bytes) -> bool:
    text = host.decode("ascii", "replace").strip().lower()
    if text.startswith("["):
        name = text[1:text.find("]")] if "]" in text else ""
    else:
        name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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
        # the bytes one request may take with its framing (chunk headers, extensions,
        # trailers) and one read of what is pipelined after it
        self.max_inflow = 2 * (self.max_header + self.max_body) + 65536
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
        self.linger = Linger(loop)   # a connection closed with a request unread (a 413)
        self.sock = self._listen(unix_mode, unix_gid)
        self.loop.add_reader(self.sock.fileno(), self._on_accept)

    def _listen(self, mode: int, gid: int | None) -> socket.socket:
        a = self.address
        try:
            if a.is_unix:      # a directory others can write: they could bind the name first
                os.close(trusted_dir(os.path.dirname(a.path), create=True,
                                     what="the http socket"))
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
        return host is None or _loopback_host(host)

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
        self._paused = self.loop.pause_reader(self.sock.fileno(), self._on_accept, 0.2)

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
        self.linger.close_all()
        self.sock.close()
        if self._ident is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.address.path)
                if (st.st_dev, st.st_ino) == self._ident:
                    os.unlink(self.address.path)
