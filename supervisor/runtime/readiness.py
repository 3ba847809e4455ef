"""Readiness and heartbeats: when a worker says it is up, and whether it is still alive.

A library worker stores READY in its block and sends one datagram to the notify socket (with
SO_PASSCRED, so the kernel tells us who sent it); the block is the truth, the datagram only
tells us to look. A RUNNING worker with a heartbeat_timeout is checked at the moment its last
heartbeat would go stale, never on a tick.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from typing import TYPE_CHECKING

from supervisor import core
from supervisor.core import State
from supervisor.runtime.instance import Instance
from worker import block as blk

if TYPE_CHECKING:
    from supervisor.runtime.runtime import Runtime

_UCRED = struct.Struct("iII")   # struct ucred: pid, uid, gid


class Readiness:
    def __init__(self, rt: Runtime, notify_path: str | None) -> None:
        self.rt = rt
        self.notify_path = notify_path
        self._sock: socket.socket | None = None
        if notify_path:
            self._open_socket(notify_path)

    # -- ready reports ----------------------------------------------------------------------
    def _open_socket(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                          | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock = s
        self.rt.loop.add_reader(s.fileno(), lambda _m: self._on_datagram())

    def _on_datagram(self) -> None:
        assert self._sock is not None
        while True:
            try:
                _data, anc, _f, _a = self._sock.recvmsg(64, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, _uid, _gid = _UCRED.unpack(payload[:_UCRED.size])
                    inst = self.rt.reaper.by_pid.get(pid)
                    if inst is not None:
                        self.check_ready(inst)

    def check_ready(self, inst: Instance) -> None:
        """The block is the truth; the datagram only tells us to look."""
        if inst.block is None or inst.st.state is not State.STARTING:
            return
        _seq, state = inst.block.ack
        if state in (blk.ST_READY, blk.ST_BUSY):
            self.rt.dispatch(inst, core.ReadyReported(self.rt.now()))

    # -- heartbeats -------------------------------------------------------------------------
    def on_transition(self, inst: Instance) -> None:
        """Heartbeats are checked while RUNNING only."""
        if inst.st.state is State.RUNNING:
            self._arm_heartbeat(inst, inst.cfg.heartbeat_timeout)
        elif inst.hb_timer is not None:
            inst.hb_timer.cancel()
            inst.hb_timer = None

    def _arm_heartbeat(self, inst: Instance, timeout: float | None,
                       at: float | None = None) -> None:
        if not timeout or inst.block is None:
            return
        if inst.hb_timer is not None:
            inst.hb_timer.cancel()
        when = at if at is not None else self.rt.now() + timeout
        inst.hb_timer = self.rt.loop.call_at(when, lambda: self._check_heartbeat(inst, timeout))

    def _check_heartbeat(self, inst: Instance, timeout: float) -> None:
        inst.hb_timer = None
        if inst.st.state is not State.RUNNING or inst.block is None:
            return
        now = self.rt.now()
        hb_ns = inst.block.heartbeat_ns
        last = hb_ns / 1e9 if hb_ns else (inst.st.ready_at or now)
        if now - last > timeout:
            self.rt.dispatch(inst, core.HeartbeatStale(now, now - last))
        else:
            self._arm_heartbeat(inst, timeout, at=last + timeout)

    def close(self) -> None:
        if self._sock is None:
            return
        self.rt.loop.remove(self._sock.fileno())
        self._sock.close()
        self._sock = None
        if self.notify_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.notify_path)
