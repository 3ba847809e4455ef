"""Findings of a second red-team pass (socket, client, converter), each as a regression test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.control.protocol import BadReply, decode_reply
from supervisor.convert import ConvertError, convert
from supervisor.names import parse_signal


def test_a_deeply_nested_reply_is_a_bad_reply_not_a_traceback() -> None:
    with pytest.raises(BadReply):
        decode_reply(b"[" * 200_000)


@pytest.mark.parametrize("code", [-1, 256, 10**30, True])
def test_a_reply_code_outside_0_255_is_refused(code: object) -> None:
    import json
    with pytest.raises(BadReply):
        decode_reply(json.dumps({"code": code, "out": "", "err": ""}).encode())


def test_lone_surrogates_in_a_reply_are_printable() -> None:
    reply = decode_reply(b'{"code": 0, "out": "a\\ud800b", "err": "\\udfff"}')
    assert reply.out.encode("utf-8") and reply.err.encode("utf-8")


@pytest.mark.parametrize("n", ["32", 33])
def test_the_c_librarys_own_signals_are_refused(n: str | int) -> None:
    with pytest.raises(ValueError, match="not a signal a worker can be sent"):
        parse_signal(n)


def test_a_huge_field_width_in_a_supervisord_conf_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "s.conf"
    conf.write_text("[program:a]\ncommand=/bin/echo %(here)900000000s\n")
    with pytest.raises(ConvertError, match="field width or precision over 1000"):
        convert(str(conf))


def test_an_include_of_a_fifo_or_a_device_never_blocks(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.fifo")
    conf = tmp_path / "s.conf"
    for target in (str(tmp_path / "*.fifo"), "/dev/zero"):
        conf.write_text(f"[include]\nfiles={target}\n[program:a]\ncommand=/bin/true\n")
        try:
            convert(str(conf))
        except ConvertError as e:
            assert "not a regular file" in str(e)
