"""The client's reading of one reply (supervisor.ctl.client._read_reply) over a real socket,
from a peer that sends it in odd pieces, adds bytes after it, stops early or sends garbage."""

from __future__ import annotations

import socket
import threading

import pytest

from supervisor.control.protocol import ERROR, Reply, encode_reply
from supervisor.ctl import client


def read_from(pieces: list[bytes]) -> Reply:
    """What the client reads when the peer sends these pieces and closes."""
    ours, theirs = socket.socketpair()

    def send() -> None:
        try:
            for p in pieces:
                theirs.sendall(p)
        except OSError:
            pass        # the client read its line and closed before the rest: as it may
        finally:
            theirs.close()

    writer = threading.Thread(target=send)
    writer.start()
    try:
        return client._read_reply(ours, None, None, "test.yaml")
    finally:
        ours.close()
        writer.join(10)


def test_a_reply_in_tiny_pieces_is_read_whole() -> None:
    line = encode_reply(Reply(0, out="a\nb\n" * 50, err="e", data=[{"name": "w:1"}]))
    pieces = [line[i:i + 3] for i in range(0, len(line), 3)]
    assert read_from(pieces) == Reply(0, "a\nb\n" * 50, "e", [{"name": "w:1"}])


def test_a_big_reply_with_its_newline_in_a_late_piece() -> None:
    out = "x" * 3_000_000
    line = encode_reply(Reply(5, out=out))
    pieces = [line[i:i + 200_000] for i in range(0, len(line), 200_000)]
    assert read_from(pieces) == Reply(5, out)


def test_bytes_after_the_reply_are_ignored() -> None:
    line = encode_reply(Reply(0, out="ok\n"))
    assert read_from([line + b'{"code": 9}\ngarbage']) == Reply(0, "ok\n")
    assert read_from([line[:-1], b"\n" + b"x" * 100_000]) == Reply(0, "ok\n")


def test_a_reply_without_its_newline_before_eof_still_counts() -> None:
    assert read_from([b'{"code": 3, "err": "down\\n"}']) == Reply(3, "", "down\n")


@pytest.mark.parametrize("pieces, says", [
    ([], "without a reply"),
    ([b"\n"], "without a reply"),
    ([b"\n", encode_reply(Reply(0))], "without a reply"),
    ([b'{"code": 0'], "malformed reply"),
    ([b'{"code": 0}x\n'], "malformed reply"),
    ([b"\xff\xfe\x00\n"], "malformed reply"),
    ([b'{"code": "0"}\n'], "malformed reply"),
])
def test_no_reply_or_garbage_is_a_clear_error(pieces: list[bytes], says: str) -> None:
    with pytest.raises(client.CtlError) as e:
        read_from(pieces)
    assert e.value.exit_code == ERROR and says in e.value.message
