"""The bearer token of the HTTP API: read from the operator's file, compared in constant time.
Standard library only (the config's checks read the file too, so --check reports it)."""

from __future__ import annotations

import hmac

from supervisor import safefs

MAX_TOKEN_FILE = 4096
MIN_TOKEN = 16            # bytes; a shorter token is guessable over a fast loopback


class TokenError(ValueError):
    """str() says what is wrong with the file and how to fix it."""


def read_token(path: str) -> bytes:
    """The token in ``path`` (surrounding whitespace stripped)."""
    try:
        raw = safefs.read_secret(path, MAX_TOKEN_FILE)
    except FileNotFoundError:
        raise TokenError(f"{path}: no such file; create it: head -c 32 /dev/urandom | "
                         f"base64 > {path}; chmod 600 {path}") from None
    except OSError as e:
        raise TokenError(str(e) if isinstance(e, safefs.UnsafePathError)
                         else f"{path}: cannot read it: {e.strerror or e}") from None
    token = raw.strip()
    if len(token) < MIN_TOKEN:
        raise TokenError(f"{path}: the token is {len(token)} bytes; use at least {MIN_TOKEN} "
                         f"(e.g. head -c 32 /dev/urandom | base64 > {path})")
    if any(b < 0x21 or b > 0x7E for b in token):
        raise TokenError(f"{path}: the token must be printable ASCII without spaces (it goes "
                         "in an Authorization header)")
    return token


def token_matches(expected: bytes, header_value: bytes | None) -> bool:
    """Whether an Authorization header value is 'Bearer <expected>' (constant time in the
    token's bytes)."""
    if header_value is None:
        return False
    scheme, _, given = header_value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(given.strip(), expected)
