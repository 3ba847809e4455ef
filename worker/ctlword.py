"""Public face of the native atomics module (worker._ctlword).

``View(buffer)`` gives C11 atomic operations and shared-futex waits at byte offsets of a
writable buffer, normally the mmap of a control block:

* ``load_u32/load_u64`` (acquire), ``store_u32/store_u64`` (release),
  ``store_u32_seq_cst`` (for the command word), ``exchange_u32`` and ``fetch_add_u64`` ->
  old value (seq_cst; fetch_add wraps).
* ``wait_u32(offset, expected, timeout=None) -> bool``: True once the word differs from
  ``expected``, False on timeout. Releases the GIL, sleeps in slices of at most
  ``WAIT_SLICE_NS`` (250 ms) and runs Python signal handlers on EINTR and between slices,
  so Ctrl-C / SIGTERM handlers run promptly and an exception they raise ends the wait.
* ``wake(offset, n=INT_MAX) -> int``: wake up to n waiters (shared futex, cross-process).

Errors: TypeError (no buffer protocol; a non-int value; a write to read-only memory --
read-only buffers can still be loaded, waited and woken on), IndexError (offset out of
range), ValueError (misaligned absolute address; closed view; bad timeout),
OverflowError (value out of range), BufferError (close() during a wait), OSError (errno).
"""

from worker._ctlword import WAIT_SLICE_NS, Poller, View

__all__ = ["WAIT_SLICE_NS", "Poller", "View"]
