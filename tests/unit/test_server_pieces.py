"""Replies in pieces (Responder.pieces, protocol.reply_pieces) over real Unix sockets with the
Loop in a thread: the client gets the same one line as a whole reply; pieces are made only as
the client takes them (one that never reads costs one piece, not the reply); other clients are
answered meanwhile; a piece that raises cuts the reply and is logged, the loop carries on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.control.protocol import Reply, Request, encode_reply, reply_pieces
from supervisor.control.server import ControlServer, Responder
from tests.unit.test_server_harness import (
    LoopThread,
    connect,
    read_all,
    roundtrip,
    wait_for,
)

ROW = {"name": "w:1", "state": "RUNNING", "pid": 7, "text": "é \udcff \"q\"\n"}


@pytest.mark.parametrize(("out", "data", "err"), [
    (["a\n", "", "é\udcff\n", '"q"\\\t'], [[ROW], [], [ROW, {"n": None, "f": 1.5}]], "e\n"),
    ([], None, ""), ([""], [], ""), (["t"], [[]], "x"), ([], [[ROW] * 3], "")])
def test_pieces_join_to_the_whole_reply(out: list[str], data: list[list[Any]] | None,
                                        err: str) -> None:
    rows = None if data is None else [r for batch in data for r in batch]
    assert b"".join(reply_pieces(5, out, data, err)) == encode_reply(
        Reply(5, "".join(out), err, rows))


class Pieces:
    """A handler answering "rows" with opts.n pieces of opts.size bytes of text, counting the
    pieces made; "boom" raises in its third piece; "ping" answers whole."""

    def __init__(self) -> None:
        self.made = 0
        self.logged: list[str] = []

    def __call__(self, req: Request, respond: Responder) -> None:
        n, size = int(req.opts.get("n", 0)), int(req.opts.get("size", 0))

        def text() -> Iterator[str]:
            for k in range(n):
                if req.cmd == "boom" and k == 2:
                    raise RuntimeError("piece failed")
                self.made += 1
                yield f"{k:08}" + "x" * (size - 9) + "\n"

        if req.cmd == "ping":
            respond(Reply(0, out="pong\n"))
        else:
            assert respond.pieces(reply_pieces(0, text(), [[{"name": "a"}]]))


def serve(lt: LoopThread, path: str, **kw: Any) -> Pieces:
    h = Pieces()
    server = lt.call(lambda: ControlServer(lt.loop, path, h, log=h.logged.append, **kw))
    lt.servers.append(server)
    return h


def request(cmd: str, **opts: Any) -> bytes:
    return json.dumps({"cmd": cmd, "opts": opts}).encode() + b"\n"


def test_a_reader_gets_the_one_line(lt: LoopThread, tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    h = serve(lt, path)
    doc = roundtrip(path, request("rows", n=400, size=10_000))
    assert doc["code"] == 0 and doc["data"] == [{"name": "a"}] and doc["err"] == ""
    lines = doc["out"].splitlines()
    assert len(lines) == 400 and all(x.startswith(f"{k:08}") for k, x in enumerate(lines))
    assert h.made == 400
    assert lt.call(lambda: lt.servers[0].buffered) == 0    # every piece's budget given back


def test_a_client_that_does_not_read_costs_pieces_not_the_reply(lt: LoopThread,
                                                               tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    h = serve(lt, path, write_timeout=30)
    with connect(path) as idle:
        idle.setsockopt(1, 8, 4096)                   # SO_RCVBUF: small
        idle.sendall(request("rows", n=2000, size=10_000))   # 20 MB if made whole
        # pieces are made until the kernel's buffers are full, then no more
        wait_for(lambda: h.made > 0, "the first piece is made")
        assert roundtrip(path, request("ping"))["out"] == "pong\n"   # the loop is free
        made = h.made
        assert made < 100, made
        assert roundtrip(path, request("ping"))["out"] == "pong\n"
        assert h.made == made                          # nothing made while it does not read
        raw = read_all(idle)                           # now it reads: the rest comes
    assert raw.endswith(b"\n") and len(json.loads(raw)["out"]) == 2000 * 10_000
    assert h.made == 2000
    assert lt.call(lambda: lt.servers[0].buffered) == 0


def test_a_failing_piece_cuts_the_reply_and_is_logged(lt: LoopThread, tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    h = serve(lt, path)
    with connect(path) as s:
        s.sendall(request("boom", n=10, size=100))
        raw = read_all(s)
    assert raw.startswith(b'{"code": 0, "out": "') and not raw.endswith(b"\n")
    assert any("piece failed" in line for line in h.logged), h.logged
    assert roundtrip(path, request("ping"))["out"] == "pong\n"
    assert lt.call(lambda: lt.servers[0].buffered) == 0


def test_a_client_that_leaves_midway_stops_the_pieces(lt: LoopThread, tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    h = serve(lt, path)
    s = connect(path)
    s.setsockopt(1, 8, 4096)                          # SO_RCVBUF: small
    s.sendall(request("rows", n=2000, size=10_000))
    wait_for(lambda: h.made > 0, "the first piece is made")
    s.recv(1000)
    s.close()                                         # gone with most of the reply unsent
    assert roundtrip(path, request("ping"))["out"] == "pong\n"
    wait_for(lambda: lt.call(lambda: lt.servers[0].connections) == 0, "the connection closed")
    made = h.made
    assert made < 100 and lt.call(lambda: lt.servers[0].buffered) == 0
    assert roundtrip(path, request("ping"))["out"] == "pong\n"
    assert h.made == made                             # nothing more made for it
