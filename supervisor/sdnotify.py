"""The systemd notify protocol (``sd_notify(3)``), standard library only.

systemd hands a ``Type=notify`` service the address of a datagram socket in ``$NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace). The service sends newline-separated
``KEY=VALUE`` assignments in single datagrams: ``READY=1`` when it is up (``systemctl start``
returns only then), ``STATUS=…`` free text shown by ``systemctl status``, ``WATCHDOG=1`` pings
when ``WatchdogSec=`` is set, ``RELOADING=1`` … ``READY=1`` around a reload, ``STOPPING=1`` on
shutdown, ``MAINPID=`` to name another main process.

Rules this module keeps:

* Without ``$NOTIFY_SOCKET`` (not under systemd, or a unit of another Type) every call is a
  cheap no-op returning False. The daemon calls it unconditionally.
* Sending never raises and never logs: a full or missing socket must not disturb the daemon.
  Every call returns whether the datagram was handed to the kernel.
* It never blocks: the socket is non-blocking; a datagram that does not fit is dropped.
* ``from_env()`` reads the environment and does not modify it, so a daemon that re-executes
  itself in place (``os.execv``, same PID) still finds ``$NOTIFY_SOCKET``. Workers must not
  inherit these variables (with ``NotifyAccess=main`` systemd drops their messages, with a log
  line each): strip :data:`ENV_KEYS` from a worker's environment, e.g. with :func:`scrub_env`.
* The watchdog interval is half of ``$WATCHDOG_USEC`` (what ``sd_watchdog_enabled`` advises),
  and only if ``$WATCHDOG_PID`` is unset or names this process: the variables are inherited by
  children, which must not think the watchdog is theirs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping

#: Variables systemd sets for the notify protocol; none of them belongs in a worker's environment.
ENV_KEYS: tuple[str, ...] = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def scrub_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` without the notify-protocol variables (for a worker's environment)."""
    return {k: v for k, v in env.items() if k not in ENV_KEYS}


def _address(raw: str) -> str | None:
    """``$NOTIFY_SOCKET`` -> an AF_UNIX address; '@' means the abstract namespace."""
    if raw.startswith("@"):
        return "\0" + raw[1:] if len(raw) > 1 else None
    if raw.startswith("/"):
        return raw
    return None  # vsock (vsock:CID:PORT, systemd >= 253) and anything else: unsupported


class Notifier:
    """One service's channel to systemd. ``Notifier(None)`` is the no-op notifier."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
    ) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd's environment describes (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        address = _address(env.get("NOTIFY_SOCKET", ""))
        return cls(address, watchdog_usec=_watchdog_usec(env))

    # -- state ------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True when there is a socket to talk to (the daemon runs under a Type=notify unit)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of WatchdogSec), or None: no watchdog."""
        if self._watchdog_usec is None or self._address is None:
            return None
        return self._watchdog_usec / 2_000_000

    # -- messages ---------------------------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) is complete; ``systemctl start`` returns."""
        return self.send("READY=1" if status is None else f"READY=1\nSTATUS={_line(status)}")

    def status(self, text: str) -> bool:
        """``STATUS=``: one line for ``systemctl status`` (e.g. "12 running, 0 fatal")."""
        return self.send(f"STATUS={_line(text)}")

    def reloading(self) -> bool:
        """``RELOADING=1``; follow with :meth:`ready` when the reload is done.

        ``MONOTONIC_USEC`` (CLOCK_MONOTONIC in µs) is required by systemd >= 253 to accept
        RELOADING=1 (Type=notify-reload); older versions ignore the unknown key.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """``STOPPING=1``: the service is shutting down."""
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping, every :meth:`watchdog_interval` seconds."""
        return self.send("WATCHDOG=1")

    def mainpid(self, pid: int) -> bool:
        """``MAINPID=``: another process is now the service's main process."""
        return self.send(f"MAINPID={int(pid)}")

    def send(self, message: str) -> bool:
        """Send one datagram; True if the kernel took it. Never raises, never blocks."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError:
            # ENOENT/ECONNREFUSED (systemd gone or restarted its socket), EAGAIN (queue full),
            # EMSGSIZE: drop it. A fresh socket next time costs nothing and heals odd states.
            self.close()
            return False
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __repr__(self) -> str:
        return f"Notifier(address={self._address!r}, watchdog_usec={self._watchdog_usec!r})"


def _line(text: str) -> str:
    """A value must not contain a newline (it would start another assignment)."""
    return " ".join(str(text).splitlines())


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
