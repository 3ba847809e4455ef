"""supervisorctl events -f: the client's stream reader fed what a daemon (or an impostor)
might send: stream lines, a lost marker, a final reply, garbage, a line without end, EOF."""

from __future__ import annotations

import json

import pytest

from supervisor.ctl import client
from supervisor.ctl.events import MAX_LINE, follow_stream


def feeder(*chunks: bytes) -> client.Recv:
    it = iter(chunks)
    return lambda _n: next(it, b"")


def line(doc: object) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def test_stream_lines_then_the_final_reply(capsys: pytest.CaptureFixture[str]) -> None:
    data = (line({"stream": True, "out": "a:0 state STOPPED -> STARTING\n"})
            + line({"stream": True, "lost": 3, "err": "supervisord: 3 events lost\n"})
            + line({"stream": True, "out": 5}) + line({"stream": True, "out": "\ud800x\n"})
            + line({"code": 0, "out": "", "err": "bye\n", "data": None}))
    with pytest.raises(SystemExit) as e:
        follow_stream(feeder(data[:7], data[7:50], data[50:]))  # split anywhere
    assert e.value.code == 0
    out, err = capsys.readouterr()
    assert out == "a:0 state STOPPED -> STARTING\n?x\n"
    assert err == "supervisord: 3 events lost\nbye\n"


@pytest.mark.parametrize("data", [
    b"not json\n", b'{"stream": "yes", "out": "x"}\n', b'{"code": 999}\n', b"[1, 2]\n",
    b"[" * 100000 + b"\n",
])
def test_garbage_is_a_clean_error(data: bytes) -> None:
    with pytest.raises(client.CtlError) as e:
        follow_stream(feeder(data))
    assert (e.value.exit_code, e.value.message) == (
        1, "supervisorctl: supervisord sent a malformed event stream (see its log)")


def test_a_line_without_end_is_refused_not_buffered_forever() -> None:
    chunks = [b"x" * 65536] * (MAX_LINE // 65536 + 2)
    with pytest.raises(client.CtlError, match="malformed event stream"):
        follow_stream(feeder(*chunks))


def test_eof_says_the_stream_ended() -> None:
    with pytest.raises(client.CtlError) as e:
        follow_stream(feeder(line({"stream": True, "out": "x\n"})))
    assert e.value.exit_code == 1 and "ended the event stream" in e.value.message
