"""Closing a control connection whose peer may still be sending (supervisor.control.server).

A Unix stream socket closed with bytes unread in its receive buffer resets its peer: the client
of a request over MAX_REQUEST read its error reply and then ECONNRESET instead of EOF, or got
EPIPE in its sendall() of the rest and never read the reply. Such a socket is shut down for
writing instead (the client sees the reply, then EOF), and what comes in is read and dropped
until the client closes, for at most MAX_BYTES and SECONDS, and at most MAX_SOCKETS sockets at
once; past any bound the socket is closed as before (a reset, for a client that would not stop):
nothing a client sends can hold the daemon, a slot or an fd for longer than SECONDS.
"""

from __future__ import annotations

import array
import fcntl
import socket
import termios

from supervisor.loop import Loop, Timer

MAX_BYTES = 1024 * 1024   # read and dropped after the reply, per socket
SECONDS = 2.0             # a lingering socket is closed this long after the reply at most
MAX_SOCKETS = 16          # lingering at once; more are closed at once


def unread(sock: socket.socket) -> int:
    """Bytes waiting in sock's receive buffer (0 when it cannot be told)."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    except OSError:
        return 0
    return buf[0]


class Linger:
    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self._socks: dict[int, tuple[socket.socket, Timer, list[int]]] = {}
        self.closed = False

    def __len__(self) -> int:
        return len(self._socks)

    def close(self, sock: socket.socket, more: bool = False) -> None:
        """Close sock (not watched by the loop any more), lingering if bytes are unread or
        ``more`` (the peer was cut off in the middle of its request: more may be on the way)."""
        if self.closed or len(self._socks) >= MAX_SOCKETS or not (more or unread(sock)):
            sock.close()
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:            # the peer is gone already
            sock.close()
            return
        fd = sock.fileno()
        timer = self.loop.call_later(SECONDS, lambda: self._end(fd))
        self._socks[fd] = (sock, timer, [MAX_BYTES])
        self.loop.add_reader(fd, lambda _mask: self._on_readable(fd))

    def _on_readable(self, fd: int) -> None:
        entry = self._socks.get(fd)
        if entry is None:
            return
        sock, _timer, left = entry
        for _ in range(4):        # a bounded slice per loop turn
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            left[0] -= len(data)
            if not data or left[0] <= 0:      # the client closed (or would not stop)
                self._end(fd)
                return

    def _end(self, fd: int) -> None:
        entry = self._socks.pop(fd, None)
        if entry is None:
            return
        sock, timer, _left = entry
        timer.cancel()
        self.loop.remove(fd)
        sock.close()

    def close_all(self) -> None:
        self.closed = True
        for fd in list(self._socks):
            self._end(fd)
