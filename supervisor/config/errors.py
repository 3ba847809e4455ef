"""Config error messages: one line per problem, naming the file, the line, the path inside the
file, what was found and what is allowed. Never a traceback, never pydantic's wording.

    configs/app.yaml:12: workers.web.numprocs: must be ≥ 1 (got 0)
    configs/app.yaml:9: workers.web.numproc: unknown key; did you mean 'numprocs'?

The validators in models.py and values.py raise ``problem(...)`` (a PydanticCustomError of type
"pyvisor") whose text is used as is; pydantic's own error types are translated here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from supervisor.config import supervisord_names
from supervisor.config.yamlfile import Path

ERROR_TYPE = "pyvisor"


MAX_SHOWN = 100   # problems a ConfigError names; a file of 10,000 workers can have 30,000

# A run of this many characters without a space is a value from the file (a name, a path, a
# number) that no reader needs in full: the message keeps its start and says how long it was.
_LONG_RUN = re.compile(r"\S{1025,}")


def clip(line: str) -> str:
    """``line`` with every run of more than 1,024 non-space characters after its first word (the
    file, as given) cut to its first 200: a 200 KB value must not make a 200 KB message (the
    field and the fix around it are kept)."""
    where, space, rest = line.partition(" ")
    if len(rest) <= 1024:
        return line
    return where + space + _LONG_RUN.sub(
        lambda m: f"{m.group()[:200]}…[{len(m.group()):,} characters]", rest)


class ConfigError(Exception):
    """A config file cannot be used. ``str()`` is the whole message (one line per problem);
    ``errors`` holds the lines, each with its long values clipped: the first MAX_SHOWN, then
    one line counting the rest."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = [clip(line) for line in errors[:MAX_SHOWN]]
        if len(errors) > MAX_SHOWN:
            self.errors.append(f"... and {len(errors) - MAX_SHOWN:,} more problems; fix "
                               "these and check the file again")
        super().__init__("\n".join(self.errors))


def problem(message: str) -> PydanticCustomError:
    """Raise this from a validator: ``message`` becomes the text after the path."""
    return PydanticCustomError(ERROR_TYPE, message)   # no context: braces are kept as is


def got(value: Any) -> str:
    """A found value the way the YAML file would show it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def suggest(word: str, choices: Iterable[str]) -> str | None:
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown(kind: str, word: str, choices: Sequence[str], hints: bool = True) -> str:
    """``unknown worker 'dbb'; did you mean 'db'?`` or ``...; known: a, b`` (the first
    MAX_KNOWN of them). hints=False: neither (a difflib search and a sort of every name per
    problem: 10,000 workers naming 10 missing ones each in depends_on took hours, and each
    line held all 10,000 names)."""
    if not hints:
        return f"unknown {kind} {got(word)}"
    near = suggest(word, choices)
    if near is not None:
        return f"unknown {kind} {got(word)}; did you mean {near!r}?"
    known = ", ".join(sorted(choices)[:MAX_KNOWN]) if choices else "none"
    if len(choices) > MAX_KNOWN:
        known += f", ... ({len(choices):,} in all)"
    return f"unknown {kind} {got(word)}; known: {known}"


MAX_KNOWN = 20


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def line_text(file: str, line: int | None, path: Path, message: str) -> str:
    where = f"{file}:{line}" if line is not None else file
    return f"{where}: {dotted(path)}: {message}" if path else f"{where}: {message}"


def _data_path(loc: tuple[str | int, ...], data: Any, keep_last: bool) -> Path:
    """pydantic's ``loc`` as a path in the file: drop union tags and ``[key]`` markers (the
    parts that are not keys of the data), keep the last part when it names a missing key."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_dict = isinstance(node, dict) and part in node
        if in_dict or isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif last and keep_last and isinstance(node, dict):
            node = None
        else:
            continue
        path.append(part)
    return tuple(path)


_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list",
    "tuple_type": "a list", "set_type": "a list", "frozen_set_type": "a list",
    "finite_number": "a finite number",
}
_BOUNDS = {"greater_than_equal": ("ge", "≥"), "greater_than": ("gt", ">"),
           "less_than_equal": ("le", "≤"), "less_than": ("lt", "<")}


def translate(err: ErrorDetails, data: Any, keys_at: Callable[[Path], Sequence[str]],
              hints: bool = True) -> tuple[Path, str]:
    """One problem: its path and its words (hints: with a suggestion for an unknown key, a
    difflib search over the valid keys)."""
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    path = _data_path(tuple(err["loc"]), data, keep_last=kind in ("missing", "extra_forbidden"))
    if kind == "missing":
        return path[:-1], f"missing required key {path[-1]!r}"
    if kind == "extra_forbidden":
        key = str(path[-1])
        from_supervisord = supervisord_names.hint(path)
        if from_supervisord is not None:
            return path, from_supervisord
        if not hints:
            return path, "unknown key"
        valid = keys_at(path[:-1])
        near = suggest(key, valid)
        if near is not None:
            return path, f"unknown key; did you mean {near!r}?"
        return path, f"unknown key; valid keys: {', '.join(valid)}"
    if kind == ERROR_TYPE:
        return path, err["msg"]
    if kind in _TYPE_WORDS:
        return path, f"must be {_TYPE_WORDS[kind]} (got {got(value)})"
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        return path, f"must be {sign} {got(ctx.get(name))} (got {got(value)})"
    msg = err["msg"]
    return path, f"{msg[:1].lower()}{msg[1:]} (got {got(value)})"


# Problems past these get no suggestion: a file of 300,000 unknown keys (16 MiB are allowed)
# took ~0.15 ms of difflib each, and the check for a repeated problem was quadratic (40 min).
MAX_HINTED = 1_000


def from_validation_error(exc: ValidationError, data: Any,
                          keys_at: Callable[[Path], Sequence[str]]) -> list[tuple[Path, str]]:
    """The problems of a failed validation; a missing key that a misspelt one was meant to be
    is not reported twice (``worker:`` -> "did you mean 'workers'?", not also "missing")."""
    out: dict[tuple[Path, str], None] = {}      # (in order, each once: a set's lookups)
    for n, err in enumerate(exc.errors(include_url=False)):
        out.setdefault(translate(err, data, keys_at, hints=n < MAX_HINTED))
    meant = {path[:-1] + (msg.split("'")[1],) for path, msg in out
             if msg.startswith("unknown key; did you mean")}
    return [(path, msg) for path, msg in out
            if not (msg.startswith("missing required key") and path + (msg.split("'")[1],)
                    in meant)]
