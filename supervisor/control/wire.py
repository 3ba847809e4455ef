"""The client's half of the control protocol (supervisor.control.protocol describes it all):
the framing and its limits, the exit codes, the reply, and the two functions supervisorctl
calls -- encode_request and decode_reply. protocol re-exports every name here; the daemon's
half (reading requests, writing replies) stays there.

A module of its own because supervisorctl's start-up is its latency: this imports no more than
supervisor.jsonlite (no json, re, enum, typing or dataclasses), and the fast path of the entry
point (supervisor.ctl.main) imports this rather than protocol.
"""

from __future__ import annotations

from supervisor.jsonlite import dumps, loads

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

# -- limits and framing ----------------------------------------------------------------------
EOL = b"\n"  # ends the request and the reply: each is one line of JSON
MAX_REQUEST = 64 * 1024  # bytes of one request line; the daemon refuses a longer one
MAX_REPLY = 64 * 1024 * 1024  # bytes of one reply line; the client reads no further
READ_TIMEOUT = 10.0  # seconds the daemon waits for a complete request
WRITE_TIMEOUT = 10.0  # seconds the daemon gives a client to take its reply
CONNECT_TIMEOUT = 5.0  # seconds the client waits for the daemon to accept the connection
# A request is small and flat; these bound what the daemon's parser and handlers ever see.
MAX_DEPTH = 32  # nesting of objects and arrays
MAX_INT_DIGITS = 20  # digits of an integer (a pid, a signal, a count)
MAX_CMD = 64  # characters of "cmd"
MAX_TARGETS = 4096  # entries of "targets"
MAX_NAME = 1024  # characters of one target name

# -- exit codes (plain ints: an IntEnum would import enum into every supervisorctl run) ------
OK = 0
ERROR = 1
USAGE = 2
NOT_RUNNING = 3
NO_SUCH_TARGET = 4
FAILED = 5
TIMEOUT = 6
BAD_CONFIG = 7
INTERRUPTED = 130

DESCRIPTIONS: dict[int, str] = {
    OK: "success",
    ERROR: "error (the message says what failed)",
    USAGE: "usage error (bad option, argument or request)",
    NOT_RUNNING: "no supervisord is running for this config",
    NO_SUCH_TARGET: "no such worker or instance",
    FAILED: "an instance went FATAL, could not start or could not stop",
    TIMEOUT: "no answer from supervisord in time",
    BAD_CONFIG: "the config is invalid (reload refused)",
    INTERRUPTED: "interrupted (Ctrl-C); supervisord carries on with the request",
}


# -- messages --------------------------------------------------------------------------------
class ProtocolError(ValueError):
    """A line that is not a message of this protocol; str() says why."""


class BadReply(ProtocolError):
    """A reply the client cannot read."""


class Reply:
    """One reply: the exit code, the text for stdout and stderr, and data for the verb. (A plain
    class: typing.NamedTuple or dataclasses would cost supervisorctl's start-up more than all
    the rest of a ``supervisorctl pid``.) Compares equal by its four fields."""

    __slots__ = ("code", "out", "err", "data")

    def __init__(self, code: int, out: str = "", err: str = "", data: Any = None) -> None:
        self.code = code
        self.out = out
        self.err = err
        self.data = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return (self.code, self.out, self.err, self.data) == (
            other.code, other.out, other.err, other.data)

    __hash__ = None  # type: ignore[assignment]   # mutable, as a dict is

    def __repr__(self) -> str:
        return f"Reply(code={self.code!r}, out={self.out!r}, err={self.err!r}, data={self.data!r})"

    def to_doc(self) -> dict[str, Any]:
        return {"code": self.code, "out": self.out, "err": self.err, "data": self.data}


def request_doc(cmd: str, targets: Iterable[str] = (),
                opts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The request supervisorctl sends: all three keys, in this order."""
    return {"cmd": cmd, "targets": list(targets), "opts": dict(opts or {})}


def encode_request(request: Mapping[str, Any]) -> bytes:
    """The request's line (ASCII: non-ASCII text is escaped)."""
    return dumps(request).encode() + EOL


def decode_reply(line: bytes) -> Reply:
    """The reply in one line (without its newline); BadReply unless it is an object with an
    integer "code". An "out" or "err" that is not a string counts as empty."""
    try:
        doc = loads(line)
    except (ValueError, RecursionError):     # not JSON, or nested past the parser
        doc = None
    code = doc.get("code") if isinstance(doc, dict) else None
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
        raise BadReply("reply is not a JSON object with an exit code 0..255")
    assert isinstance(doc, dict)
    out, err = doc.get("out"), doc.get("err")
    return Reply(
        code=code,
        out=_printable(out),
        err=_printable(err),
        data=doc.get("data"),
    )


def _printable(text: object) -> str:
    """A reply text as it can be printed: lone surrogates (valid in JSON, not in UTF-8)
    replaced; not a string: empty."""
    if not isinstance(text, str):
        return ""
    if text.isascii():      # O(1) for a str; a megabyte of status text needs no pass
        return text
    return text.encode("utf-8", "replace").decode("utf-8")
