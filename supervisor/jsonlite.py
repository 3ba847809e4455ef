"""``json.loads`` and ``json.dumps`` with their defaults, exactly, without importing json.

supervisorctl's start-up is its latency, and the json package (which imports re, and re enum)
costs more to import than the rest of a ``supervisorctl pid``. These two call the C accelerator
json itself uses (_json), set up as json.loads and json.dumps set it up with their defaults,
and hand json itself every case they are not sure of: bytes that json might not read as UTF-8
(it guesses UTF-16/32 from the first bytes; the fast way takes only a line starting with
``{"``), anything the fast way fails on (json then raises its own exception, with its own
message), a Python without _json. So the result, or the exception, is always json's.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    from _json import encode_basestring_ascii, make_encoder, make_scanner
except ImportError:      # a Python without the accelerator: json does it all
    make_scanner = None  # type: ignore[assignment,misc]

_JSON_SPACE = " \t\n\r"     # what json skips around a document


class _DecoderDefaults:
    """The attributes the scanner reads from json's default JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


def _refuse(o: object) -> object:
    raise TypeError(type(o).__name__)   # json.dumps below says it in its own words


if make_scanner is not None:
    _scan = make_scanner(_DecoderDefaults())  # type: ignore[arg-type]
    _markers: dict[int, Any] = {}
    _encode = make_encoder(_markers, _refuse, encode_basestring_ascii, None, ": ", ", ",
                           False, False, True)


def loads(raw: bytes) -> Any:
    """json.loads(raw)."""
    if make_scanner is not None and raw.startswith(b'{"'):
        try:
            text = raw.decode("utf-8", "surrogatepass")
            value, end = _scan(text, 0)
        except Exception:
            end = -1                        # json says why (or reads what this could not)
        if end >= 0 and (end == len(text) or not text[end:].strip(_JSON_SPACE)):
            return value
    import json

    return json.loads(raw)


def dumps(obj: object) -> str:
    """json.dumps(obj)."""
    if make_scanner is not None:
        try:
            return "".join(_encode(obj, 0))
        except Exception:
            _markers.clear()                # json says why
    import json

    return json.dumps(obj)
