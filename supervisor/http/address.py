"""The ``http:`` address: ``HOST:PORT`` (an IP literal or ``localhost``; IPv6 in brackets) or
an absolute Unix socket path. Standard library only (the config imports it)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

MAX_UNIX_PATH = 107       # sun_path holds 108 bytes with the NUL


class AddressError(ValueError):
    """str() is the message the config error shows."""


@dataclass(frozen=True, slots=True)
class HttpAddress:
    host: str = ""          # "" for a Unix socket
    port: int = 0
    path: str = ""          # the Unix socket's path ("" for TCP)

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    @property
    def loopback(self) -> bool:
        """Reachable from this machine only (a Unix socket, or a loopback address)."""
        return self.is_unix or ipaddress.ip_address(self.host).is_loopback

    @property
    def family_v6(self) -> bool:
        return not self.is_unix and ":" in self.host

    def __str__(self) -> str:
        if self.is_unix:
            return self.path
        return f"[{self.host}]:{self.port}" if self.family_v6 else f"{self.host}:{self.port}"


def parse_address(text: str) -> HttpAddress:
    """'127.0.0.1:9001', '[::1]:9001', 'localhost:9001' or '/run/pyvisor/http.sock'."""
    if "\0" in text:
        raise AddressError("must not contain a NUL character")
    if text.startswith("/"):
        if len(os.fsencode(text)) > MAX_UNIX_PATH:
            raise AddressError(f"a Unix socket path is at most {MAX_UNIX_PATH} bytes (got "
                               f"{len(os.fsencode(text))})")
        return HttpAddress(path=os.path.normpath(text))
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise AddressError("must be HOST:PORT (e.g. '127.0.0.1:9001') or an absolute Unix "
                           "socket path (e.g. '/run/pyvisor/http.sock')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AddressError("an IPv6 address goes in brackets: '[::1]:9001'")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise AddressError(f"{host!r} is not an IP address: give one (e.g. '127.0.0.1', "
                           "'0.0.0.0', '[::1]') or 'localhost'; names are not resolved") from None
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
            and 1 <= int(port_text) <= 65535):
        raise AddressError(f"port must be a number from 1 to 65535 (got {port_text!r})")
    return HttpAddress(host=host, port=int(port_text))
