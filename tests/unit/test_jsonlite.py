"""supervisor.jsonlite against json itself: the same value, or the same exception with the
same message, for every input -- well-formed, broken and hostile (the reply and the locator
it reads come from another process)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import jsonlite
from supervisor.ctl.readonly import is_target


def outcome(f: Any, arg: Any) -> tuple[str, str]:
    try:
        value = f(arg)
    except BaseException as e:      # RecursionError included: compare that too
        return type(e).__name__, str(e)
    # repr tells NaN, -0.0 and 1 from 1.0 apart, as == would not
    return "ok", repr(value)


def same_loads(raw: bytes) -> None:
    assert outcome(jsonlite.loads, raw) == outcome(json.loads, raw), raw[:200]


HOSTILE = [
    b'{"a": 1}', b'{"a": 1} \t\r\n', b'{"a": 1}x', b'{"a": 1} {"b": 2}', b'{"a": NaN}',
    b'{"a": -Infinity, "b": Infinity}', b'{"a": [1, 2, {"b": "\\ud800"}]}', b'{"a": "\xff"}',
    b'{"a": "\xed\xa0\x80"}', b'{"a": 1e400}', b'{"a": ' + b"9" * 5000 + b"}",
    b'{"' + b"k" * 100_000 + b'": 1}', b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"a"', b'{"', b'{"\x00\x00\x00', b'{"\x00', b'  {"a": 1}', b"\xef\xbb\xbf{}",
    b'\xff\xfe{\x00"\x00a\x00"\x00:\x001\x00}\x00', b'{"a": "\x01"}', b'{"a": "tab\there"}',
    b'{"a": 01}', b'{"a": .5}', b'{"a": true, "a": false}', b"", b"[]", b"{}",
]


def test_loads_hostile_lines() -> None:
    for raw in HOSTILE:
        same_loads(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=5), st.booleans())
def test_loads_what_json_writes(doc: dict[str, Any], ascii_only: bool) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only)
    same_loads(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.sampled_from([b"", b'{"', b'{"a": ', b'{"a": [']))
def test_loads_garbage(tail: bytes, head: bytes) -> None:
    same_loads(head + tail)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_dumps_as_json(value: Any) -> None:
    assert outcome(jsonlite.dumps, value) == outcome(json.dumps, value)


def test_dumps_what_json_refuses_and_goes_on() -> None:
    loop: list[Any] = []
    loop.append(loop)
    for value in ({"a": {1, 2}}, [1, {"a": object()}], loop, {(1, 2): 3}, {"x": math.inf},
                  {"t": (1, 2), 1: None, 2.5: "é\n", None: b"no"}, {False: 1, None: [True]}):
        assert outcome(jsonlite.dumps, value) == outcome(json.dumps, value)
    # a refusal in the middle of a container leaves nothing behind for the next call
    assert jsonlite.dumps({"a": [1, 2]}) == '{"a": [1, 2]}'


# the pattern is_target replaces, as the spec it must follow exactly
TARGET_PATTERN = re.compile(r"(?:all|[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(?::[0-9]{1,6})?)\Z")
target_chars = st.sampled_from("aZ09_.-:/ \n\x00é٣１A")


@settings(max_examples=2000, deadline=None)
@given(st.text(target_chars, max_size=80) | st.text(max_size=10))
def test_is_target_is_the_pattern(text: str) -> None:
    assert is_target(text) is (TARGET_PATTERN.match(text) is not None), repr(text)


def test_is_target_edges() -> None:
    for text in ("all", "allx", "all:1", "a" * 64, "a" * 65, "a:123456", "a:1234567", "a:",
                 ":1", "-a", ".a", "a.-_", "a:1:2", "a\n", "", "a:٣", "a:１"):
        assert is_target(text) is (TARGET_PATTERN.match(text) is not None), repr(text)
