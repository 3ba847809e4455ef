"""The control protocol between supervisorctl and supervisord: the one module both sides import.

Framing: the client connects to the daemon's Unix socket and sends ONE JSON object and a newline
(at most ``MAX_REQUEST`` bytes, within ``READ_TIMEOUT``); the daemon answers with ONE JSON object
and a newline (at most ``MAX_REPLY`` bytes, taken by the client within ``WRITE_TIMEOUT``), then
closes. One connection carries one exchange: no ids, no pipelining, no length prefix.

Request ``{"cmd": str, "targets": [str, ...], "opts": {str: value}}``: the protocol requires only
"cmd"; "targets" and "opts" are read (and checked) by the verbs that use them. The line must be
strict JSON in strict UTF-8 within the limits below (nesting, integer digits, sizes): the daemon
answers anything else with a USAGE reply, so no peer reaches a verb with data it cannot handle.

Reply ``{"code": int, "out": str, "err": str, "data": value}``: "code" is supervisorctl's exit
code, "out" and "err" the text it prints verbatim on stdout and stderr, "data" what a verb needs
beyond the text (tail: the log paths; status: the rows; pid: the pids).

A verb may answer with a stream instead (``events --follow``): any number of lines
``{"stream": true, "out": str, "err": str, ...}`` (a ``"lost": N`` marker among them when the
client fell behind), then the one final reply above, or EOF when the daemon goes away. See
supervisor.control.stream.

Exit codes are defined here, once. The daemon decides the code of every reply; the client decides
only the codes of failures it sees itself (no daemon, time-out, interrupted) and click's usage
errors.

Standard library only: supervisorctl imports this module, and its start-up time is its latency.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from enum import IntEnum
from typing import Any, NamedTuple

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


# -- exit codes ------------------------------------------------------------------------------
class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_RUNNING = 3
    NO_SUCH_TARGET = 4
    FAILED = 5
    TIMEOUT = 6
    BAD_CONFIG = 7
    INTERRUPTED = 130


OK = ExitCode.OK
ERROR = ExitCode.ERROR
USAGE = ExitCode.USAGE
NOT_RUNNING = ExitCode.NOT_RUNNING
NO_SUCH_TARGET = ExitCode.NO_SUCH_TARGET
FAILED = ExitCode.FAILED
TIMEOUT = ExitCode.TIMEOUT
BAD_CONFIG = ExitCode.BAD_CONFIG
INTERRUPTED = ExitCode.INTERRUPTED

DESCRIPTIONS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "error (the message says what failed)",
    ExitCode.USAGE: "usage error (bad option, argument or request)",
    ExitCode.NOT_RUNNING: "no supervisord is running for this config",
    ExitCode.NO_SUCH_TARGET: "no such worker or instance",
    ExitCode.FAILED: "an instance went FATAL, could not start or could not stop",
    ExitCode.TIMEOUT: "no answer from supervisord in time",
    ExitCode.BAD_CONFIG: "the config is invalid (reload refused)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); supervisord carries on with the request",
}


def help_epilog() -> str:
    """The exit-code table for --help (\\b keeps click from rewrapping it)."""
    lines = ["\b", "Exit codes:"]
    lines += [f"  {int(code):>3}  {text}" for code, text in DESCRIPTIONS.items()]
    return "\n".join(lines)


# -- messages --------------------------------------------------------------------------------
class ProtocolError(ValueError):
    """A line that is not a message of this protocol; str() says why."""


class BadRequest(ProtocolError):
    """A request the daemon cannot read; the server answers it with a USAGE reply."""


class BadReply(ProtocolError):
    """A reply the client cannot read."""


class Request(dict[str, Any]):
    """One request: the JSON object as the client sent it, with typed views of its three keys.

    It stays that object (a dict) rather than a copy of the three keys, so a handler sees exactly
    what was sent and it compares equal to and serializes as that object. decode_request makes
    sure "cmd" is a string, "opts" an object when given, and a "targets" list within MAX_TARGETS
    and MAX_NAME. Whether "targets" is a list of names is left to the verbs: one that takes no
    targets ignores a malformed "targets", one that does answers ``targets is None`` with a
    usage error; likewise an option of the wrong type (see ``flag``).
    """

    __slots__ = ()

    @classmethod
    def make(
        cls, cmd: str, targets: Iterable[str] = (), opts: Mapping[str, Any] | None = None
    ) -> Request:
        """The request supervisorctl sends: all three keys, in this order."""
        return cls(cmd=cmd, targets=list(targets), opts=dict(opts or {}))

    @property
    def cmd(self) -> str:
        cmd = self.get("cmd")
        return cmd if isinstance(cmd, str) else ""

    @property
    def targets(self) -> list[str] | None:
        """The names asked for: [] when absent or empty, None when not a list of strings."""
        raw = self.get("targets")
        if not raw:
            return []
        if isinstance(raw, list) and all(isinstance(t, str) for t in raw):
            return list(raw)
        return None

    def flag(self, name: str, default: bool) -> bool | None:
        """The boolean option ``name`` (default when absent or null); None when not a bool."""
        value = self.opts.get(name)
        if value is None:
            return default
        return value if isinstance(value, bool) else None

    @property
    def opts(self) -> Mapping[str, Any]:
        """The options; {} when absent or not an object."""
        raw = self.get("opts")
        return raw if isinstance(raw, dict) else {}


class Reply(NamedTuple):
    """One reply: the exit code, the text for stdout and stderr, and data for the verb. (A
    NamedTuple, not a dataclass: importing dataclasses is a third of supervisorctl's start.)"""

    code: int
    out: str = ""
    err: str = ""
    data: Any = None

    def to_doc(self) -> dict[str, Any]:
        return {"code": self.code, "out": self.out, "err": self.err, "data": self.data}


_REPLY_DEFAULTS: dict[str, Any] = {"code": int(ERROR), "out": "", "err": "", "data": None}


def encode_request(request: Mapping[str, Any]) -> bytes:
    """The request's line (ASCII: non-ASCII text is escaped)."""
    return json.dumps(request).encode() + EOL


def decode_request(line: bytes) -> Request:
    """The request in one line (without its newline). BadRequest says what is wrong with it.

    Only strict JSON in strict UTF-8 passes: no lone surrogates (raw or escaped), no key twice
    in one object (``{"cmd": "status", "cmd": "shutdown"}`` means what each reader's JSON
    library makes of it: Python's takes the last), no NaN or Infinity, no integer longer
    than MAX_INT_DIGITS, no nesting deeper than MAX_DEPTH, and
    "targets" and "opts" (when given) within their bounds and of the right shape.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"request is not valid JSON (not UTF-8: {e})") from None
    try:
        doc = json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int,
                         parse_float=_finite_float, object_pairs_hook=_unique_keys)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest(f"request nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise BadRequest(f"request is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"request must be a JSON object (got {type(doc).__name__})")
    _check_tree(doc)
    cmd = doc.get("cmd")
    if not isinstance(cmd, str):
        raise BadRequest('request has no "cmd" string')
    if len(cmd) > MAX_CMD:
        raise BadRequest(f'"cmd" is longer than {MAX_CMD} characters')
    targets = doc.get("targets")
    if isinstance(targets, list):
        if len(targets) > MAX_TARGETS:
            raise BadRequest(f"too many targets (more than {MAX_TARGETS})")
        if any(isinstance(t, str) and len(t) > MAX_NAME for t in targets):
            raise BadRequest(f"a target name is longer than {MAX_NAME} characters")
    if doc.get("opts") is not None and not isinstance(doc["opts"], dict):
        raise BadRequest(f'"opts" must be a JSON object (got {type(doc["opts"]).__name__})')
    return Request(doc)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest(f"request has the key {key[:40]!r} twice in one object")
            seen.add(key)
    return doc


def _refuse_constant(name: str) -> Any:
    raise BadRequest(f"request is not valid JSON ({name} is not a number)")


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise BadRequest(f"request has an integer of more than {MAX_INT_DIGITS} digits")
    return int(digits)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"request has a number out of range ({text[:40]})")
    return value


def _check_tree(doc: dict[str, Any]) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings with lone surrogates (from \\u escapes:
    they cannot be encoded back, so no reply could quote them). Iterative: no recursion."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise BadRequest("request is not valid JSON (a string has a lone surrogate)")
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise BadRequest(f"request nests deeper than {MAX_DEPTH} levels")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items)


def encode_reply(reply: Reply | Mapping[str, Any]) -> bytes:
    """The reply's line. A mapping may leave keys out: they are filled in, "code" with ERROR so
    a reply that forgot its code never passes for success; any other keys it has are kept.

    Text goes as UTF-8, and a string decoded from OS bytes with surrogateescape (a file name, a
    worker's output) goes back as those bytes. Raises TypeError or ValueError when the data does
    not serialize.
    """
    doc = reply.to_doc() if isinstance(reply, Reply) else {**_REPLY_DEFAULTS, **reply}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogateescape") + EOL


_encode = json.JSONEncoder(ensure_ascii=False).encode   # one encoder for every piece


def _text(value: Any) -> bytes:
    return _encode(value).encode("utf-8", "surrogateescape")


def reply_pieces(code: int, out: Iterable[str] = (), data: Iterable[list[Any]] | None = None,
                 err: str = "") -> Iterator[bytes]:
    """The bytes of ``encode_reply(Reply(code, "".join(out), err, data))`` (data: the rows of
    all batches in one list, or null) in pieces, each made only when asked for: the daemon
    sends a big reply (status at 10,000 instances) a batch of rows at a time, never building
    it whole. The client sees the same one line."""
    pre = b'{"code": %d, "out": "' % int(code)
    for text in out:
        if text:
            yield pre + _text(text)[1:-1]
            pre = b""
    mid = pre + b'", "err": ' + _text(err) + b', "data": '
    if data is None:
        yield mid + b"null}" + EOL
        return
    sep = b"["
    for rows in data:
        if rows:
            yield mid + sep + _text(rows)[1:-1]     # the items as in a list: ", " between
            mid, sep = b"", b", "
    yield mid + (b"[]" if sep == b"[" else b"]") + b"}" + EOL


def decode_reply(line: bytes) -> Reply:
    """The reply in one line (without its newline); BadReply unless it is an object with an
    integer "code". An "out" or "err" that is not a string counts as empty."""
    try:
        doc = json.loads(line)
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
    return text.encode("utf-8", "replace").decode("utf-8")
