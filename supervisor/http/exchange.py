"""What a route sees of one HTTP request, and how it answers: ``Exchange`` and ``Router``.

A route is ``fn(exchange)``. It answers once, now or later (an API verb answers when the
instances have settled), with ``reply``/``json``/``text``, or opens a ``Stream`` (chunked; for
an event stream) and sends into it until it ends it. ``exchange.closed`` turns True when the
client went away; whatever is sent then is dropped.

The route table matches paths segment by segment: a segment ``{name}`` matches any one decoded
segment. A path that matches no route is 404; one that matches with another method is 405
with the methods that it allows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supervisor.http.conn import HttpConn

Route = Callable[["Exchange"], None]
Headers = Sequence[tuple[bytes, bytes]]

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           409: "Conflict", 413: "Content Too Large", 421: "Misdirected Request",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}
TEXT = b"text/plain; charset=utf-8"
JSON = b"application/json"


def json_body(doc: Any) -> bytes:
    """A JSON reply body; text decoded from OS bytes (surrogateescape) goes back as bytes."""
    return json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8",
                                                               "surrogateescape") + b"\n"


@dataclass(eq=False, slots=True)
class Exchange:
    """One request: method, decoded path, query (each name once), headers (names
    lowercased; one value each: a repeated header is refused before a route sees it), body."""

    conn: HttpConn
    method: str
    path: str
    query: dict[str, str]
    headers: dict[bytes, bytes]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)   # the {name} segments
    route: str = "other"      # the matched pattern, for the request counter
    answered: bool = False

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def reply(self, status: int, body: bytes, content_type: bytes = TEXT,
              headers: Headers = ()) -> None:
        if self.answered:
            return
        self.answered = True
        self.conn.respond(self, status, [(b"content-type", content_type), *headers], body)

    def text(self, status: int, text: str, headers: Headers = ()) -> None:
        self.reply(status, text.encode("utf-8", "replace"), TEXT, headers)

    def json(self, status: int, doc: Any, headers: Headers = ()) -> None:
        self.reply(status, json_body(doc), JSON, headers)

    def stream(self, status: int, content_type: bytes,
               on_close: Callable[[], None] = lambda: None) -> Stream:
        """Start a response whose body is sent piece by piece (chunked); ``on_close`` runs once
        when the connection ends, however it ends."""
        self.answered = True
        return self.conn.start_stream(self, status, content_type, on_close)


class Stream:
    """The body of a streamed response. ``send`` returns False once the stream is closed (the
    client went away, or fell more than the server's stream buffer behind and was dropped)."""

    __slots__ = ("_conn", "ended")

    def __init__(self, conn: HttpConn) -> None:
        self._conn = conn
        self.ended = False

    @property
    def closed(self) -> bool:
        return self.ended or self._conn.closed

    @property
    def pending(self) -> int:
        """Bytes sent into the stream that its client has not taken yet."""
        return len(self._conn.out)

    def fits(self, n: int, cap: int) -> bool:
        """Whether n more bytes keep this stream within ``cap`` bytes waiting and all the
        server's replies within its output budget (else the caller drops, and says so)."""
        server = self._conn.server
        return len(self._conn.out) + n <= cap and server.buffered + n <= server.max_output

    def send(self, data: bytes) -> bool:
        if self.closed:
            return False
        return self._conn.stream_data(data)

    def end(self) -> None:
        if not self.closed:
            self.ended = True
            self._conn.stream_end()


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[tuple[str, ...], dict[str, Route], str]] = []

    def add(self, method: str, pattern: str, fn: Route) -> None:
        segs = tuple(pattern.strip("/").split("/")) if pattern != "/" else ()
        for have, methods, _pat in self._routes:
            if have == segs:
                methods[method] = fn
                return
        self._routes.append((segs, {method: fn}, pattern))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], str,
                                                      list[str]]:
        """(route or None, params, pattern, the methods the path allows: [] when none)."""
        segs = tuple(path.strip("/").split("/")) if path != "/" else ()
        for want, methods, pattern in self._routes:
            if len(want) != len(segs):
                continue
            params: dict[str, str] = {}
            for w, s in zip(want, segs, strict=True):
                if w.startswith("{") and w.endswith("}"):
                    params[w[1:-1]] = s
                elif w != s:
                    break
            else:
                fn = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
                return fn, params, pattern, sorted(methods)
        return None, {}, "other", []
