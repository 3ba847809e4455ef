"""The cycle collector paused around work that makes many objects that live on, or no cycles:
the runtime's batches (a stop all, the exits of a loop turn) and a config load.

A batch of 10,000 instances allocates some 100,000 objects within one loop turn: enough to set
off the collector's full passes, each of which walks every tracked object the daemon holds
(what a mass start made after start-up froze the heap: ~50-90 ms per pass at 10,000 workers,
several per stop all). Nothing such a batch makes is cyclic garbage that must go at once, so
the collector waits until the batch is done (its counters keep running: whatever was
allocated is looked at by the next pass, none is exempted for good). A load makes some 100
objects per worker, nearly all of which live on: passes over them while they are made find
nothing (they were 30-50 % of a 10,000-worker load); what a load leaves as garbage is bounded
by the config's size.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cycle collection inside the block (nested blocks: the outermost one resumes it)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
