"""Numbers read back from the intent record are bounded (it is ours, but a bug or a disk
error must not put a nonsense count in status)."""

from __future__ import annotations


def test_restarts_from_an_intent_record_are_bounded() -> None:
    from supervisor.runtime.intent import MAX_RESTARTS, restarts_of
    assert [restarts_of({"restarts": v}) for v in (3, -1, True, 1.5, "7", 2**80, None)] == [
        3, 0, 0, 0, 0, 0, 0]
    assert restarts_of({"restarts": MAX_RESTARTS}) == MAX_RESTARTS
    assert restarts_of({}) == 0
