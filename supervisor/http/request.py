"""What the server checks of a request before any route sees it: the head (repeated headers,
the target, the path, the query) and the Host header on a loopback address.

A request that fails a check is refused with (status, why): 400 for what is malformed, 421 for
a Host that does not name a loopback host where the endpoint is a loopback address (a web page
that rebinds a DNS name to 127.0.0.1 cannot read the API).
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Callable

import h11

from supervisor.http.exchange import Exchange

MAX_QUERY_FIELDS = 32
_ONCE = (b"host", b"authorization", b"content-length", b"content-type", b"origin",
         b"last-event-id")
_LOOPBACK_NAMES = {"localhost"}


def parse_request(req: h11.Request, ex: Exchange,
                  host_ok: Callable[[bytes | None], bool]) -> tuple[int, str] | None:
    """Fill ex (headers, path, query) from req; (status, why) when the request is refused."""
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
        ex.query.setdefault(k, v)
    if not host_ok(ex.headers.get(b"host")):
        return 421, ("this endpoint answers only requests for a loopback host (Host: "
                     "localhost, 127.0.0.1 or [::1]); a page that points another name at "
                     "this address gets nothing")
    return None


def content_length(req: h11.Request) -> int | None:
    for name, value in req.headers:
        if name == b"content-length":
            return int(value)        # h11 checked that it is a number
    return None


def host_name(host: bytes) -> str:
    """The name in a Host header (no port, no brackets), lowercased."""
    text = host.decode("ascii", "replace").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else ""
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def loopback_host(host: bytes) -> bool:
    name = host_name(host)
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
