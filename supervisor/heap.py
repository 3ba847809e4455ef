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
from collections.abc import Callable, Iterator


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


def settle_heap() -> None:
    """Collect once, then exempt what lives now (the config, the instances, the loop) from
    the cycle collector. Its full passes otherwise walk every object of 10,000 instances,
    100-300 ms each on this machine, several times during a mass start or stop: pauses in
    which no client is answered. Undone (gc.unfreeze) before a reload replaces them.

    Then the free memory goes back to the kernel: a config load peaks at ~3.5 times what it
    keeps (its YAML nodes, the validation's own objects; ~5 KB a worker), and a reload holds
    the old config too, so at 10,000 workers the heap's high-water mark stayed in VmRSS
    (+70 MB after a reload) though Python had freed it. malloc_trim(0) is ~1 ms here."""
    gc.collect()
    gc.freeze()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_TRIM: list[Callable[[int], int] | None] = []


def _malloc_trim() -> Callable[[int], int] | None:
    if not _TRIM:
        import ctypes  # here: supervisorctl imports this module and never needs ctypes
        try:
            _TRIM.append(ctypes.CDLL(None).malloc_trim)
        except (OSError, AttributeError):   # not glibc (musl has none)
            _TRIM.append(None)
    return _TRIM[0]
