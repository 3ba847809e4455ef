"""HTTP helpers for the tests of supervisor.http: a free loopback port, one request, a config
section and a token file."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None, timeout: float = 30.0) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def make_token(directory: Path) -> tuple[str, bytes]:
    """A token file of mode 0600 in directory: (its path, the token)."""
    token = secrets.token_urlsafe(32).encode()
    path = directory / "http.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(token + b"\n")
    return str(path), token


def bearer(token: bytes) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.decode()}"}


class EventStream:
    """A client of GET /api/v1/events: ``next()`` returns one message as a dict of its fields
    (``id``, ``event``, ``data`` parsed from JSON; ``comment`` for a comment line alone), each
    read bounded by the socket timeout. Use as a context manager (closes the connection)."""

    def __init__(self, port: int, path: str = "/api/v1/events",
                 headers: dict[str, str] | None = None, timeout: float = 20.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", path, headers=headers or {})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}

    def next(self) -> dict[str, Any]:
        msg: dict[str, Any] = {}
        data: list[str] = []
        while True:
            raw = self.resp.readline(1 << 20)
            if not raw:
                raise EOFError(f"the stream ended (after {msg or 'nothing'})")
            line = raw.decode().rstrip("\n")
            if line == "":
                if data or "id" in msg or "event" in msg or "comment" in msg:
                    break
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                msg["comment"] = value
                if not data and "id" not in msg and "event" not in msg:
                    self.resp.readline(1 << 20)      # the blank line after a lone comment
                    return msg
            elif field == "data":
                data.append(value)
            else:
                msg[field] = value
        if data:
            msg["data"] = json.loads("\n".join(data))
        return msg

    def events(self, n: int) -> list[dict[str, Any]]:
        """The next n runtime events (the data of messages with an id), skipping the rest."""
        out: list[dict[str, Any]] = []
        while len(out) < n:
            m = self.next()
            if "id" in m:
                assert int(m["id"].partition("-")[2]) == m["data"]["seq"], m   # EPOCH-SEQ
                out.append(m["data"])
        return out

    def close(self) -> None:
        self.resp.close()            # the response holds the socket open too
        self.conn.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
