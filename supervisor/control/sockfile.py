"""The control socket's file: created never accessible to anyone else, not even for a moment
(bound under a umask of 0177, then chown'ed to the group, then chmod'ed); a stale file is
replaced only when nobody answers on it. And the peer checks that need the OS (groups).
"""

from __future__ import annotations

import grp
import os
import socket
import stat
import struct


class ServerError(Exception):
    """The control socket cannot be set up; str() says which path and why."""


class SocketInUseError(ServerError):
    """Another process answers on the socket path (another daemon for this config?)."""


_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux


def resolve_group(group: str) -> int:
    try:
        return int(grp.getgrnam(group).gr_gid)
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ServerError(f"control socket group {group!r} does not exist") from None


def supplementary_gids(pid: int) -> set[int]:
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


def create_socket(path: str, mode: int, gid: int | None) -> tuple[socket.socket, tuple[int, int]]:
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


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_of(sock: socket.socket, gid: int | None) -> tuple[int | None, int]:
    """(None if the peer may talk to us, else its uid; the peer's uid, -1 if unknown): root,
    the daemon's euid and, when ``gid`` is set, that group's members may."""
    pid: int
    uid: int
    peer_gid: int
    try:
        pid, uid, peer_gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return -1, -1
    if uid == 0 or uid == os.geteuid():
        return None, uid
    if gid is not None and (peer_gid == gid or gid in supplementary_gids(pid)):
        return None, uid
    return uid, uid
