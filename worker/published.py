"""The daemon's reader of what a worker publishes beside its state: the status text and the
named counters and gauges of its status page (the writer's side is worker.api.Worker.status /
counter / gauge, or pyvisor_status / pyvisor_metric in ctlblock.h).

Every reader here is a function of ``read(size, offset) -> bytes`` (os.pread on the status
page's fd, or anything that behaves like it), so it does not care how the daemon holds the
page. The page is the worker's, so every byte is hostile:

  * Bounded work: the text seqlock is tried at most TEXT_TRIES times, with no sleep between
    tries (a writer that never finishes reads as "no text", never as a stall); the metrics are
    two reads (the kind bytes, then the slots) and one pass over METRIC_COUNT slots.
  * Torn-read safe: the text counts only when the seq before and after is the same even
    number; a slot counts only if its kind byte (stored last by the writer, release) was set
    in the first read, so its name is whole in the second. Values are aligned u64s that the
    worker updates with single atomics; the kernel copies each in one piece on x86-64.
  * Validated: a text longer than TEXT_SIZE is refused; it is decoded as UTF-8 with
    replacement and every character that is not printable (controls, escapes, bidi marks) is
    shown as U+FFFD, so a worker cannot paint a terminal. A name must be NUL-padded, within
    METRIC_NAME_SIZE and pass metric_name_ok; a slot with an unknown kind, a bad name or a
    name already seen is counted in ``bad_slots`` and left out.
  * Any OSError/ValueError or short read (a truncated or vanished page) reads as unknown.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from worker.block import (
    METRIC_COUNT,
    METRIC_COUNTER,
    METRIC_FREE,
    METRIC_GAUGE,
    METRIC_KIND_NAMES,
    METRIC_NAME_SIZE,
    METRIC_SIZE,
    SOFF_METRIC_KINDS,
    SOFF_METRICS,
    SOFF_TEXT,
    SOFF_TEXT_LEN,
    SOFF_TEXT_SEQ,
    TEXT_SIZE,
    metric_name_ok,
)

Read = Callable[[int, int], bytes]  # (size, offset) -> bytes, like os.pread(fd, size, offset)
TEXT_TRIES = 8
_SLOT = struct.Struct(f"<{METRIC_NAME_SIZE}sQ")
_KINDS = {k: METRIC_KIND_NAMES[k] for k in (METRIC_COUNTER, METRIC_GAUGE)}
_REPLACEMENT = "\ufffd"


class MetricValue(NamedTuple):
    name: str
    kind: str  # "counter" (value 0..2**64-1) or "gauge" (an i64)
    value: int


@dataclass(frozen=True, slots=True)
class WorkerData:
    """What one worker published: its status text (None: none, or unreadable this time), its
    metrics in slot order, and how many slots held garbage."""

    text: str | None
    metrics: tuple[MetricValue, ...] = ()
    bad_slots: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "status_text": self.text,
            "metrics": [{"name": m.name, "kind": m.kind, "value": m.value}
                        for m in self.metrics],
        }  # fmt: skip


def fd_reader(fd: int) -> Read:
    """A Read over an fd (pread: no mapping, so nothing the worker does can fault us)."""
    return lambda size, offset: os.pread(fd, size, offset)


def _read(read: Read, size: int, offset: int) -> bytes | None:
    try:
        raw = read(size, offset)
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, bytes) and len(raw) == size else None


def clean_text(raw: bytes) -> str:
    """Bytes a worker wrote as text, safe to print: UTF-8 with replacement, and every
    character that is not printable (a control, an escape, a bidi mark) replaced."""
    text = raw.decode("utf-8", "replace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _REPLACEMENT for c in text)


def read_text(read: Read, tries: int = TEXT_TRIES) -> str | None:
    """The status text under its seqlock; None when there is none, it is garbage (a length
    past TEXT_SIZE), or the seqlock does not settle within ``tries`` reads."""
    for _ in range(tries):
        head = _read(read, 8, SOFF_TEXT_SEQ)  # the seq and the length, in one aligned u64
        if head is None:
            return None
        if head[0] & 1:  # a write in progress (or a writer that died in one)
            os.sched_yield()
            continue
        body = _read(read, TEXT_SIZE, SOFF_TEXT)
        again = _read(read, 4, SOFF_TEXT_SEQ)
        if body is None or again is None:
            return None
        if again != head[:4]:
            continue
        length = int.from_bytes(head[SOFF_TEXT_LEN - SOFF_TEXT_SEQ :], "little")
        if length > TEXT_SIZE:
            return None
        return clean_text(body[:length]) if length else None
    return None


_NAMES: dict[bytes, str | None] = {}  # raw slot name -> checked name; bounded below
_NAMES_MAX = 4096


def _name(raw: bytes) -> str | None:
    """A slot's name: NUL-padded ASCII that passes metric_name_ok, else None."""
    got = _NAMES.get(raw, _NAMES)
    if got is not _NAMES:
        return got  # type: ignore[return-value]
    name, _, pad = raw.partition(b"\0")
    text: str | None = None
    if not pad.strip(b"\0") and name.isascii() and metric_name_ok(name.decode("ascii")):
        text = name.decode("ascii")
    if len(_NAMES) >= _NAMES_MAX:  # a worker inventing names cannot grow it for good
        _NAMES.clear()
    _NAMES[raw] = text
    return text


def read_metrics(read: Read) -> tuple[tuple[MetricValue, ...], int] | None:
    """(the published metrics in slot order, the number of garbage slots); None when the
    page cannot be read."""
    kinds = _read(read, METRIC_COUNT, SOFF_METRIC_KINDS)
    if kinds is None:
        return None
    if not any(kinds):
        return (), 0
    slots = _read(read, METRIC_COUNT * METRIC_SIZE, SOFF_METRICS)
    if slots is None:
        return None
    out: list[MetricValue] = []
    seen: set[str] = set()
    bad = 0
    for kind, (raw, value) in zip(kinds, _SLOT.iter_unpack(slots), strict=True):
        if kind == METRIC_FREE:
            continue
        name = _name(raw)
        if kind not in _KINDS or name is None or name in seen:
            bad += 1
            continue
        seen.add(name)
        if kind == METRIC_GAUGE and value >> 63:
            value -= 1 << 64  # a gauge is an i64
        out.append(MetricValue(name, _KINDS[kind], value))
    return tuple(out), bad


def read_worker_data(read: Read) -> WorkerData | None:
    """The status text and metrics of one status page; None when it cannot be read."""
    metrics = read_metrics(read)
    if metrics is None:
        return None
    return WorkerData(read_text(read), *metrics)
