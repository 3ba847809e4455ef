"""A reload's config load on a thread (supervisor.loading.ConfigLoads): what its apply raises."""

from __future__ import annotations

import time
from typing import Any

from supervisor.control.protocol import FAILED, Reply
from supervisor.loading import ConfigLoads, Loaded
from supervisor.loop import Loop


def test_a_bug_in_applying_a_reload_costs_its_replies_not_the_loop() -> None:
    """then() runs in a reader callback of the loop: before, what it raised went up through
    run_once and ended the daemon (on the control socket's handler it had cost the reply)."""
    loop = Loop()
    applied: list[Any] = []

    def then(loaded: Loaded, waiting: list[Any]) -> None:
        applied.append(loaded)
        if len(applied) == 1:
            raise KeyError("a bug")
        for done in waiting:
            done(Reply(0, out="no changes\n"))

    replies: list[Reply] = []
    loads = ConfigLoads(loop, lambda: "config", then)  # type: ignore[arg-type,return-value]
    loads.request(replies.append)
    loads.request(replies.append)          # waits for the next load
    end = time.monotonic() + 10
    try:
        while len(replies) < 2 and time.monotonic() < end:
            loop.run_once()
    finally:
        loop.close()
    assert [r.code for r in replies] == [FAILED, 0], replies
    assert "KeyError" in replies[0].err and applied == ["config", "config"]
