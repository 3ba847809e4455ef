"""When the intent record is written (supervisor.runtime.intent.Intent.changed): at the end of
the loop turn, or within LAZY seconds for the end of a stop; an urgent change never waits
behind a lazy one, and one write serves every change before it."""

from __future__ import annotations

import dataclasses
import heapq
import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.loop import Loop
from supervisor.runtime.intent import LAZY, LAZY_MAX, Intent


def make() -> tuple[Intent, list[float], list[float]]:
    now = [100.0]
    loop = Loop(clock=lambda: now[0])
    rt = SimpleNamespace(loop=loop, now=lambda: now[0], instances={})
    intent = Intent(rt, "pvtest")  # type: ignore[arg-type]
    writes: list[float] = []
    real = intent.write

    def write(begun: Mapping[int, tuple[bool, float]] | None = None) -> None:   # no file
        writes.append(now[0])
        intent.enabled = False
        real(begun)                   # clears the pending timer, writes nothing (disabled)
        intent.enabled = True

    intent.write = write  # type: ignore[method-assign]
    return intent, now, writes


def run_until(intent: Intent, now: list[float], until: float) -> None:
    """Advance the fake clock in 50 ms steps, running the timers that come due."""
    timers = intent.rt.loop._timers
    while now[0] <= until:
        while timers and timers[0].when <= now[0]:
            t = heapq.heappop(timers)
            if not t.cancelled:
                t.fn()
        now[0] = round(now[0] + 0.05, 6)


def test_lazy_waits_urgent_does_not_and_one_write_serves_both() -> None:
    intent, now, writes = make()
    intent.changed(lazy=True)
    intent.changed(lazy=True)
    run_until(intent, now, 100.0 + LAZY / 2)
    assert writes == []                           # the end of a stop may wait
    intent.changed()                              # an urgent change does not wait behind it
    run_until(intent, now, 100.0 + 2 * LAZY)
    assert len(writes) == 1 and writes[0] < 100.0 + LAZY


def test_a_lazy_change_after_an_urgent_one_is_written_with_it() -> None:
    intent, now, writes = make()
    intent.changed()
    intent.changed(lazy=True)
    run_until(intent, now, 100.0 + 2 * LAZY)
    assert writes == [100.0]
    intent.changed(lazy=True)                     # after a write: a new one, lazily
    run_until(intent, now, 100.0 + 4 * LAZY)
    assert len(writes) == 2 and writes[1] >= writes[0] + LAZY


def test_a_stream_of_lazy_changes_is_written_once_it_pauses_or_at_lazy_max() -> None:
    intent, now, writes = make()
    for _ in range(20):                           # the exits of a stop all, 0.1 s apart
        intent.changed(lazy=True)
        run_until(intent, now, now[0] + 0.1)
    assert writes == []                           # no O(instances) write per LAZY meanwhile
    run_until(intent, now, now[0] + 2 * LAZY)
    assert len(writes) == 1 and writes[0] >= 100.0 + 2.0 + LAZY - 0.1
    start = now[0]
    while now[0] < start + LAZY_MAX + 1:          # changes that never pause: at LAZY_MAX
        intent.changed(lazy=True)
        run_until(intent, now, now[0] + 0.1)
    assert len(writes) == 2 and writes[1] <= start + LAZY_MAX + 0.1


def test_an_urgent_change_in_a_lazy_stream_is_written_at_once() -> None:
    intent, now, writes = make()
    for _ in range(5):
        intent.changed(lazy=True)
        run_until(intent, now, now[0] + 0.1)
    intent.changed()
    at = now[0]
    run_until(intent, now, now[0] + 0.05)
    assert writes == [at]


def test_the_file_is_the_json_of_every_record() -> None:
    """encode() joins each distinct record's text: the same document json.dumps makes."""
    import json

    from supervisor.core import InstanceState, State, TimerKind
    from supervisor.loop import Timer
    from supervisor.runtime.intent import encode

    def inst(name: str, st: InstanceState, graceful: float | None = None) -> SimpleNamespace:
        timers = {} if graceful is None else {TimerKind.GRACEFUL: Timer(graceful, 0, print)}
        return SimpleNamespace(name=name, st=st, timers=timers)

    insts = [
        inst("idle:0", InstanceState()),                                 # nothing recorded
        inst("web:0", InstanceState(state=State.RUNNING, wanted=True, restarts=3)),
        inst("web:1", InstanceState(state=State.STOPPING, pid=7, wanted=False)),
        inst("web:2", InstanceState(state=State.STOPPING, pid=8, wanted=False)),
        inst('odd"\\name:0', InstanceState(state=State.STOPPING, pid=9, wanted=True,
                                           restart_after_stop=True), graceful=12.5),
        inst("gone:0", InstanceState(state=State.STOPPING, wanted=False)),  # no pid: no stop
    ]
    got = json.loads(encode("ab" * 16, insts))  # type: ignore[arg-type]
    assert got == {"boot_id": "ab" * 16, "gen": 0, "instances": {
        "web:0": {"wanted": True, "restarts": 3},
        "web:1": {"wanted": False,
                  "stop": {"graceful": False, "deadline": 0.0, "restart": False}},
        "web:2": {"wanted": False,
                  "stop": {"graceful": False, "deadline": 0.0, "restart": False}},
        'odd"\\name:0': {"wanted": True,
                         "stop": {"graceful": True, "deadline": 12.5, "restart": True}},
        "gone:0": {"wanted": False}}}


# -- the journal: one instance's stop, before its signal, in O(1) ------------------------------
def _journal_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Intent, Any, Path]:
    from supervisor import paths
    from supervisor.core import InstanceState, State

    run = tmp_path / "run"
    monkeypatch.setattr(paths, "runtime_dir", lambda: str(run))
    web = SimpleNamespace(name="web:0", st=InstanceState(state=State.RUNNING, pid=7,
                                                          wanted=True), timers={})
    rt = SimpleNamespace(loop=Loop(), now=lambda: 100.0, instances={"web:0": web})
    return Intent(rt, "pvj"), web, run  # type: ignore[arg-type]


def _stop(intent: Intent, web: Any) -> None:
    """web:0's stop stepped, its signal not sent yet: before_step as the runtime calls it."""
    from supervisor.core import Signal, State
    before = web.st
    web.st = dataclasses.replace(before, state=State.STOPPING, wanted=False)
    intent.before_step(web, before, [Signal(15)])


def test_a_journal_line_newer_than_the_file_is_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intent, web, run = _journal_setup(tmp_path, monkeypatch)
    intent.write()                                   # the file: gen 1, web:0 wanted
    _stop(intent, web)                               # SIGKILL now, before the file follows
    assert (run / "intent-pvj.journal").exists()
    successor = Intent(intent.rt, "pvj")
    got = successor.load()
    assert got["web:0"]["wanted"] is False and got["web:0"]["stop"]["graceful"] is False, got
    assert successor.gen == 2                        # its next file covers the line
    intent.write()                                   # the end of the turn: file, no journal
    assert not (run / "intent-pvj.journal").exists()
    assert Intent(intent.rt, "pvj").load()["web:0"]["wanted"] is False


def test_a_journal_line_the_file_covers_is_not_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file of the line's generation was renamed in and the daemon killed before it
    unlinked the journal; meanwhile (the same turn) web:0 was asked to start again: the file
    is the newer word."""
    intent, web, run = _journal_setup(tmp_path, monkeypatch)
    intent.write()
    _stop(intent, web)
    journal = (run / "intent-pvj.journal").read_bytes()
    web.st = dataclasses.replace(web.st, wanted=True)
    intent.write()                                   # gen 2, wanted again
    (run / "intent-pvj.journal").write_bytes(journal + b'{"torn": \n')  # (not unlinked)
    got = Intent(intent.rt, "pvj").load()
    assert got["web:0"]["wanted"] is True, got


def test_journal_lines_of_another_boot_or_torn_are_ignored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intent, web, run = _journal_setup(tmp_path, monkeypatch)
    intent.write()
    (run / "intent-pvj.journal").write_text(
        json.dumps({"boot_id": "00" * 16, "gen": 9, "name": "web:0",
                    "record": {"wanted": False}}) + "\n" + '{"boot_id": \n')
    assert Intent(intent.rt, "pvj").load()["web:0"] == {"wanted": True}


def test_a_line_after_a_torn_one_still_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon killed (or out of space: a short write) in the middle of its line leaves the
    journal without its last newline; its successor appends its own stop there: that line
    must not be glued to the torn one and lost (the stop then forgotten after the next
    SIGKILL, and the instance restarted)."""
    intent, web, run = _journal_setup(tmp_path, monkeypatch)
    intent.write()                                   # the file: gen 1, web:0 wanted
    (run / "intent-pvj.journal").write_bytes(b'{"boot_id": "ab", "gen": 2, "na')   # torn
    successor = Intent(intent.rt, "pvj")
    assert successor.load()["web:0"] == {"wanted": True}
    _stop(successor, web)                            # its stop, then a SIGKILL
    got = Intent(intent.rt, "pvj").load()
    assert got["web:0"]["wanted"] is False, got
