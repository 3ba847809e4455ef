"""The daemon-stdout line splitter (runtime/console.py): whatever bytes a worker writes, in
whatever chunks, the output is exactly the reference (each line prefixed, lines cut at
MAX_LINE, a partial line held until its end and never past MAX_LINE)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.runtime import console
from supervisor.runtime.console import MAX_LINE, Pipe


class _Sink:
    def __init__(self) -> None:
        self.data = b""
        self.lines = 0

    def put(self, data: bytes, lines: int) -> None:
        self.data += data
        self.lines += lines


class _Console:
    def __init__(self) -> None:
        self.s = _Sink()

    def sink(self, target: int) -> _Sink:
        return self.s


def reference(data: bytes, prefix: bytes) -> tuple[bytes, bytes]:
    """(what is printed, the partial line left) for data fed all at once, the simple way."""
    *lines, partial = data.split(b"\n")
    out = b""
    for line in lines:
        for i in range(0, max(len(line), 1), MAX_LINE):
            out += prefix + line[i:i + MAX_LINE] + b"\n"
    while len(partial) >= MAX_LINE:
        out += prefix + partial[:MAX_LINE] + b"\n"
        partial = partial[MAX_LINE:]
    return out, partial


def _pipe() -> tuple[Pipe, _Console]:
    c = _Console()
    p = Pipe.__new__(Pipe)
    p.console = c  # type: ignore[assignment]
    p.prefix, p.target, p._partial, p.open = b"w:0 | ", 1, b"", True
    return p, c


_pieces = st.one_of(st.binary(max_size=50), st.just(b"\n"), st.just(b"x" * (MAX_LINE - 1)),
                    st.just(b"y" * (MAX_LINE + 7)), st.just(b"\n" * 3))


@settings(max_examples=300, deadline=None)
@given(st.lists(_pieces, max_size=12), st.data())
def test_any_bytes_in_any_chunks(pieces: list[bytes], data: Any) -> None:
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    p, c = _pipe()
    last = 0
    for cut in [*cuts, len(stream)]:
        p._feed(stream[last:cut])
        last = cut
    # the splitter cuts a partial line at MAX_LINE as it goes: compare with the reference of
    # the whole stream, which cuts the same way
    out, partial = reference(stream, b"w:0 | ")
    assert (c.s.data, p._partial) == (out, partial)
    assert c.s.lines == c.s.data.count(b"\n")
    assert len(p._partial) < MAX_LINE


def test_module_constants_bound_the_work() -> None:
    assert console.READ_CHUNK <= 64 * 1024 and MAX_LINE <= 16 * 1024
    assert console.MAX_PENDING <= 4 * 1024 * 1024
