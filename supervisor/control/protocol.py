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
beyond the text (tail: the log paths; status --json: the rows, the text status null; pid: the
pids).

A verb may answer with a stream instead (``events --follow``): any number of lines
``{"stream": true, "out": str, "err": str, ...}`` (a ``"lost": N`` marker among them when the
client fell behind), then the one final reply above, or EOF when the daemon goes away. See
supervisor.control.stream.

Exit codes are defined once (in supervisor.control.wire, the client's half of this module,
re-exported here). The daemon decides the code of every reply; the client decides
only the codes of failures it sees itself (no daemon, time-out, interrupted) and click's usage
errors.

Standard library only. supervisorctl's click commands import this module; its fast path (status,
pid, tail) imports only supervisor.control.wire, since its start-up time is its latency.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from supervisor.control.wire import (
    BAD_CONFIG,
    CONNECT_TIMEOUT,
    DESCRIPTIONS,
    EOL,
    ERROR,
    FAILED,
    INTERRUPTED,
    MAX_CMD,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_NAME,
    MAX_REPLY,
    MAX_REQUEST,
    MAX_TARGETS,
    NO_SUCH_TARGET,
    NOT_RUNNING,
    OK,
    READ_TIMEOUT,
    TIMEOUT,
    USAGE,
    WRITE_TIMEOUT,
    BadReply,
    ProtocolError,
    Reply,
    decode_reply,
    encode_request,
    request_doc,
)

__all__ = [  # the names of wire, which supervisorctl's fast path imports without this module
    "BAD_CONFIG", "CONNECT_TIMEOUT", "DESCRIPTIONS", "EOL", "ERROR", "FAILED", "INTERRUPTED",
    "MAX_CMD", "MAX_DEPTH", "MAX_INT_DIGITS", "MAX_NAME", "MAX_REPLY", "MAX_REQUEST",
    "MAX_TARGETS", "NO_SUCH_TARGET", "NOT_RUNNING", "OK", "READ_TIMEOUT", "TIMEOUT", "USAGE",
    "WRITE_TIMEOUT", "BadReply", "ProtocolError", "Reply", "decode_reply", "encode_request",
    # and this module's own
    "BadRequest", "Request", "decode_request", "encode_reply", "help_epilog", "reply_pieces",
]


def help_epilog() -> str:
    """The exit-code table for --help (\\b keeps click from rewrapping it)."""
    lines = ["\b", "Exit codes:"]
    lines += [f"  {code:>3}  {text}" for code, text in DESCRIPTIONS.items()]
    return "\n".join(lines)


# -- messages --------------------------------------------------------------------------------
class BadRequest(ProtocolError):
    """A request the daemon cannot read; the server answers it with a USAGE reply."""


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
        return cls(request_doc(cmd, targets, opts))

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


_REPLY_DEFAULTS: dict[str, Any] = {"code": ERROR, "out": "", "err": "", "data": None}


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
