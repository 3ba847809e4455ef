"""The control socket: a Unix stream socket on the daemon's Loop, checked with SO_PEERCRED.

What goes over it is supervisor.control.protocol: one request line in, one reply line out, then
the connection is closed. The handler may answer at once or much later (``start`` waits for
RUNNING): it receives a :class:`Responder` and calls it when it is done.

Rules this module keeps, because the daemon's loop must never stall or die for a client:

- every socket is non-blocking; replies are written from a buffer as the client reads them;
- every connection has a deadline: the request within ``read_timeout``, the reply drained within
  ``write_timeout``; past it the connection is closed (with an error reply when one still fits);
- the number of connections is capped; beyond the cap a connection is accepted and closed at once;
- nothing a client sends can raise out of a callback: bad input gets a code-2 reply, a handler
  that raises gets a code-1 reply;
- a client that goes away before its (deferred) reply marks the responder ``closed``; the reply is
  then dropped silently.

The socket file is created so that it is never accessible to anyone else, not even for a moment
(bound under a umask of 0177, then chown'ed to the group, then chmod'ed), a stale file is
replaced only when nobody answers on it, and ``close()`` unlinks the file only if it is still ours.
All of this runs on the loop's thread; the handler and responders must be called from it too.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import select
import selectors
import socket
import stat
import struct
from collections.abc import Callable, Mapping
from typing import Any

from supervisor.control.protocol import (
    EOL,
    ERROR,
    MAX_REQUEST,
    READ_TIMEOUT,
    USAGE,
    WRITE_TIMEOUT,
    BadRequest,
    Reply,
    Request,
    decode_request,
    encode_reply,
)
from supervisor.loop import Loop, Timer

MAX_CONNECTIONS = 256
_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_ACCEPT_BATCH = 64


class ServerError(Exception):
    """The control socket cannot be set up; str() says which path and why."""


class SocketInUseError(ServerError):
    """Another process answers on the socket path (another daemon for this config?)."""


class Responder:
    """Sends the one reply of one connection. Call it once; later calls are ignored.

    It takes a protocol Reply, or a mapping with some of its keys (the others are filled in).

    ``closed`` becomes True when the client went away (or the server closed); a reply given then
    is dropped silently. ``replied`` is True once a reply was accepted.
    """

    __slots__ = ("_conn", "closed", "replied")

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self.closed = False
        self.replied = False

    def __call__(self, reply: Reply | Mapping[str, Any]) -> None:
        if self.closed or self.replied:
            return
        self.replied = True
        self._conn.send_reply(reply)


Handler = Callable[[Request, Responder], None]

# Connection states
_READING, _WAITING, _WRITING, _CLOSED = range(4)


class _Conn:
    """One client connection: read one line, hand it over, write one reply, close."""

    def __init__(self, server: ControlServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = b""
        self.state = _READING
        self.watch_reads = True
        self.timer: Timer | None = None
        self.responder = Responder(self)
        self.refused_uid: int | None = None  # a peer we will refuse once its request is in

    # -- events -------------------------------------------------------------------------------
    def on_event(self, mask: int) -> None:
        if self.state == _WRITING and mask & selectors.EVENT_WRITE:
            self._flush()
        elif mask & selectors.EVENT_READ and self.state in (_READING, _WAITING):
            self._on_readable()

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if self.state == _WAITING:
            if not data:
                self._on_eof_while_waiting()
            return  # bytes after the request line are ignored
        if not data:
            if self.inbuf.strip():
                self._dispatch(bytes(self.inbuf))  # the client half-closed after its request
                self._stop_reading()
            else:
                self.close()
            return
        self.inbuf += data
        nl = self.inbuf.find(EOL)
        if nl < 0 and len(self.inbuf) <= self.server.max_request:
            return
        if nl < 0 or nl > self.server.max_request:
            self.send_error(USAGE, f"request too large (more than {self.server.max_request} bytes)")
            return
        line = bytes(self.inbuf[:nl])
        self.inbuf.clear()
        self._dispatch(line)

    def _on_eof_while_waiting(self) -> None:
        # EOF is either a half-close (the client still waits for the reply) or the client is
        # gone. A Unix socket whose peer closed both directions polls POLLHUP; tell them apart.
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        events = p.poll(0)
        if any(ev & (select.POLLHUP | select.POLLERR) for _fd, ev in events):
            self.close()
        else:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self.watch_reads and self.state == _WAITING:
            self.watch_reads = False
            self.server.loop.remove(self.fd)

    # -- request ------------------------------------------------------------------------------
    def _dispatch(self, line: bytes) -> None:
        self._cancel_timer()
        if self.refused_uid is not None:
            self.send_error(ERROR, "")
            return
        try:
            req = decode_request(line)
        except BadRequest as e:
            self.send_error(USAGE, str(e))
            return
        self.state = _WAITING
        try:
            self.server.handler(req, self.responder)
        except Exception as e:  # noqa: BLE001 -- a handler bug must not take the daemon down
            cmd = req.cmd
            self.server.log(f"control socket: handler failed on {cmd!r}: {type(e).__name__}: {e}")
            self.responder(
                Reply(
                    ERROR,
                    err=f"supervisord: internal error while handling {cmd!r}: "
                    f"{type(e).__name__}: {e} (see the daemon log)\n",
                )
            )

    # -- reply --------------------------------------------------------------------------------
    def send_error(self, code: int, message: str) -> None:
        self.responder.replied = True
        if self.refused_uid is not None:  # tell a refused peer nothing else
            uid = self.refused_uid
            err = f"permission denied: uid {uid} is not allowed on this socket\n"
            self.send_reply(Reply(ERROR, err=err))
        else:
            self.send_reply(Reply(code, err=f"supervisord: bad request: {message}\n"))

    def send_reply(self, reply: Reply | Mapping[str, Any]) -> None:
        if self.state in (_WRITING, _CLOSED):
            return
        try:
            self.outbuf = encode_reply(reply)
        except (TypeError, ValueError) as e:
            self.server.log(f"control socket: reply not serializable: {e}")
            self.outbuf = encode_reply(
                Reply(ERROR, err=f"supervisord: internal error: reply not serializable ({e})\n")
            )
        self.state = _WRITING
        self._cancel_timer()
        self.timer = self.server.loop.call_later(self.server.write_timeout, self.close)
        self._flush()
        if self.state == _WRITING:
            if self.watch_reads:
                self.server.loop.modify(self.fd, selectors.EVENT_WRITE, self.on_event)
            else:
                self.server.loop.add_reader(self.fd, self.on_event, selectors.EVENT_WRITE)
                self.watch_reads = True

    def _flush(self) -> None:
        while self.outbuf:
            try:
                n = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EPIPE, ECONNRESET: the client is gone
                self.close()
                return
            self.outbuf = self.outbuf[n:]
        self.close()

    # -- lifetime -----------------------------------------------------------------------------
    def on_read_timeout(self) -> None:
        self.timer = None
        if self.state == _READING:
            self.send_error(USAGE, f"no complete request within {self.server.read_timeout:g} s")

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self.responder.closed = True
        self._cancel_timer()
        self.server._forget(self)
        if self.watch_reads:
            self.server.loop.remove(self.fd)
        self.sock.close()


class ControlServer:
    """Serve the control protocol on a Unix socket at ``path`` with the daemon's Loop.

    ``handler(request, responder)`` gets every well-formed request (decode_request accepted it)
    from an allowed peer; it calls ``responder(reply)`` now or later. Allowed peers: uid 0, the
    daemon's euid, and (when ``group`` is set) members of that group by primary or supplementary
    gid. Raises ServerError (SocketInUseError when a live daemon answers on ``path``).
    """

    def __init__(
        self,
        loop: Loop,
        path: str,
        handler: Handler,
        mode: int = 0o600,
        group: str | None = None,
        *,
        read_timeout: float = READ_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_request: int = MAX_REQUEST,
        max_connections: int = MAX_CONNECTIONS,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.loop = loop
        self.path = path
        self.handler = handler
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_request = max_request
        self.max_connections = max_connections
        self.log: Callable[[str], None] = log or (lambda _msg: None)
        self.gid: int | None = _resolve_group(group) if group is not None else None
        self._conns: dict[int, _Conn] = {}
        self._paused: Timer | None = None
        self._closed = False
        self._sock, self._ident = _create_socket(path, mode, self.gid)
        self.loop.add_reader(self._sock.fileno(), self._on_accept)

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- accepting ----------------------------------------------------------------------------
    def _on_accept(self, _mask: int) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(e)
                else:
                    self.log(f"control socket: accept failed: {e}")
                return
            self._on_connection(sock)

    def _pause_accepting(self, e: OSError) -> None:
        # Level-triggered: a listener we cannot accept from would spin the loop. Back off.
        self.log(f"control socket: accept failed ({e}); pausing for 0.2 s")
        self.loop.remove(self._sock.fileno())

        def resume() -> None:
            self._paused = None
            if not self._closed:
                self.loop.add_reader(self._sock.fileno(), self._on_accept)

        self._paused = self.loop.call_later(0.2, resume)

    def _on_connection(self, sock: socket.socket) -> None:
        if len(self._conns) >= self.max_connections:
            sock.close()
            return
        sock.setblocking(False)
        conn = _Conn(self, sock)
        self._conns[conn.fd] = conn
        self.loop.add_reader(conn.fd, conn.on_event)
        # A refused peer still gets to send its request (never parsed): replying and closing
        # before it is in would make the peer's send fail (EPIPE/ECONNRESET) instead of letting
        # it read why.
        conn.refused_uid = self._refused_uid(sock)
        conn.timer = self.loop.call_later(self.read_timeout, conn.on_read_timeout)

    def _refused_uid(self, sock: socket.socket) -> int | None:
        """None if the peer may talk to us, else its uid (for the refusal message)."""
        pid: int
        uid: int
        gid: int
        try:
            pid, uid, gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
        except OSError:
            return -1
        if uid == 0 or uid == os.geteuid():
            return None
        if self.gid is not None and (gid == self.gid or self.gid in _supplementary_gids(pid)):
            return None
        return uid

    def _forget(self, conn: _Conn) -> None:
        self._conns.pop(conn.fd, None)

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening, close every connection, unlink the socket file if it is still ours."""
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        self.loop.remove(self._sock.fileno())
        for conn in list(self._conns.values()):
            conn.close()
        self._sock.close()
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._ident:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


# -- socket creation -------------------------------------------------------------------------
def _resolve_group(group: str) -> int:
    try:
        return int(grp.getgrnam(group).gr_gid)
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ServerError(f"control socket group {group!r} does not exist") from None


def _supplementary_gids(pid: int) -> set[int]:
    """The supplementary groups of a live process, from /proc/PID/status (empty if unknown)."""
    if pid <= 0:
        return set()
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def _answers(path: str) -> bool:
    """Does a live process listen on the Unix socket at path?"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        probe.connect(path)
    except (BlockingIOError, InterruptedError):
        return True  # listening, backlog full
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as e:
        raise ServerError(f"{path}: cannot tell whether another process uses it: {e}") from e
    finally:
        probe.close()
    return True


def _create_socket(path: str, mode: int, gid: int | None) -> tuple[socket.socket, tuple[int, int]]:
    size = len(os.fsencode(path))
    if size > _SUN_PATH_MAX:
        raise ServerError(
            f"control socket path is too long ({size} bytes, Linux allows {_SUN_PATH_MAX}): "
            f"{path}; configure a shorter socket path"
        )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
        os.chmod(parent, 0o700)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ServerError(f"{path} exists and is not a socket; refusing to replace it")
        if _answers(path):
            raise SocketInUseError(
                f"{path}: another process already answers on this control socket "
                "(is another supervisord running with this config?)"
            )
        os.unlink(path)  # stale: left behind by a daemon that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
            bound = True
        finally:
            os.umask(old)
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
        st = os.lstat(path)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        if bound:
            os.unlink(path)
        raise ServerError(f"cannot set up the control socket {path}: {e}") from e
    return sock, (st.st_dev, st.st_ino)
