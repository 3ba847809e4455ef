"""A shared mapping of a file that holds no fd (the daemon's view of a ctl page)."""

from __future__ import annotations

import ctypes
import mmap
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class Mapping:
    """A shared read-write mapping of the first ``size`` bytes of fd that keeps no fd open
    (Python 3.11's mmap.mmap keeps a dup of the fd for its whole life: one more fd per
    worker). The buffer must not be touched once closed; ControlBlock sees to that."""

    def __init__(self, fd: int, size: int) -> None:
        addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap: {os.strerror(err)}")
        self.addr, self.size = addr, size
        self.buf = (ctypes.c_char * size).from_address(addr)
        self.closed = False

    def __getitem__(self, s: slice) -> bytes:
        start, stop, _ = s.indices(self.size)
        return ctypes.string_at(self.addr + start, max(0, stop - start))

    def __setitem__(self, s: slice, data: bytes) -> None:
        start, stop, _ = s.indices(self.size)
        if len(data) != stop - start:
            raise ValueError("a mapping's size cannot change")
        ctypes.memmove(self.addr + start, data, len(data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _libc.munmap(self.addr, self.size)
