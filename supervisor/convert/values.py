"""supervisord's value rules: ``%(name)s`` expansion and the option types (booleans, sizes,
exit codes, signals, ``KEY="v",K2=v2`` environments), each raising BadValue with the message
the user sees when supervisord would refuse the value too.

Expansion is Python's ``text % names`` as supervisord does it, written out so that a caller can
treat some names specially (leave ``%(process_num)d`` as written, or make it pyvisor's
``{index}``) and can escape the text around them (log path templates double their braces).
"""

from __future__ import annotations

import re
import shlex
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from supervisor.names import parse_signal

TRUTHY = ("yes", "true", "on", "1")
FALSY = ("no", "false", "off", "0")
# supervisord's level names; pyvisor has no level below TRACE, so blather becomes TRACE.
LOG_LEVELS = {"critical": "CRITICAL", "error": "ERROR", "warn": "WARNING", "info": "INFO",
              "debug": "DEBUG", "trace": "TRACE", "blather": "TRACE"}
_SIZE_SUFFIXES = {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}
# One conversion of printf-style formatting with a mapping: %% or %(name)[flags][width]
# [.precision][length]type. Width and precision cannot be * with a mapping.
_REF = re.compile(r"%(?:%|\((?P<name>[^)]*)\)(?P<spec>[#0\- +]*\d*(?:\.\d*)?)[hlL]?"
                  r"(?P<conv>[diouxXeEfFgGcrsa]))")


class BadValue(ValueError):
    """A value supervisord would refuse; the message says what is wrong with it."""


@dataclass(frozen=True)
class Ref:
    """One ``%(name)spec`` in a value, for callers that replace it themselves."""

    name: str
    spec: str       # flags, width and precision: "02" in %(process_num)02d
    text: str       # as written


Special = Callable[[Ref], str]


def expand(text: str, names: Mapping[str, object], *,
           literal: Callable[[str], str] | None = None,
           special: Mapping[str, Special] | None = None) -> tuple[str, set[str]]:
    """``text % names`` -> (the result, the names used). ``literal`` is applied to every piece
    that does not come from a ``special`` name (the text around references, and the values
    substituted); a ``special`` name's function gives its replacement as it is."""
    literal = literal or str
    out: list[str] = []
    used: set[str] = set()
    pos = 0
    while (i := text.find("%", pos)) >= 0:
        out.append(literal(text[pos:i]))
        m = _REF.match(text, i)
        if m is None:
            raise BadValue(f"{text[i:i + 2]!r} at character {i + 1} is not a %(name)s "
                           f"reference; write %% for a literal % (got {text!r})")
        pos = m.end()
        if m.group(0) == "%%":
            out.append(literal("%"))
            continue
        name, spec = m.group("name"), m.group("spec")
        if any(len(n) > 4 or int(n) > 1000 for n in re.findall(r"\d+", spec)):
            raise BadValue(f"{m.group(0)!r}: a field width or precision over 1000 (at character "
                           f"{i + 1})")
        used.add(name)
        if special and name in special:
            out.append(special[name](Ref(name, spec, m.group(0))))
            continue
        if name not in names:
            raise BadValue(_unknown(name, names))
        try:
            out.append(literal(f"%{spec}{m.group('conv')}" % (names[name],)))
        except (TypeError, ValueError) as e:
            raise BadValue(f"cannot format {m.group(0)}: {e} (value {names[name]!r})") from None
    out.append(literal(text[pos:]))
    return "".join(out), used


def _unknown(name: str, names: Mapping[str, object]) -> str:
    if name.startswith("ENV_"):
        return (f"%({name})s: the environment variable {name[4:]} is not set here; "
                "supervisord refuses the file without it too, so set it and convert again")
    known = ", ".join(sorted(n for n in names if not n.startswith("ENV_")) + ["ENV_<variable>"])
    return f"%({name})s: no such name here; the names are {known}"


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in TRUTHY:
        return True
    if value in FALSY:
        return False
    raise BadValue(f"not a boolean (got {text!r}); use true or false")


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadValue(f"not a whole number (got {text!r})") from None


def byte_size(text: str) -> int | str:
    """supervisord's sizes: digits, optionally followed by KB, MB or GB (1KB = 1024 bytes) ->
    the value pyvisor reads the same way (an int, or '50MB')."""
    value = text.strip().lower()
    for suffix in _SIZE_SUFFIXES:
        if value.endswith(suffix):
            integer(value[:-len(suffix)])
            return value[:-len(suffix)].strip() + suffix.upper()
    try:
        return int(value)
    except ValueError:
        raise BadValue(f"not a size (got {text!r}); use a number of bytes, or KB, MB, GB "
                       "after the number") from None


def exit_codes(text: str) -> list[int]:
    codes: list[int] = []
    for item in text.split(","):
        try:
            code = int(item)
        except ValueError:
            code = -1
        if not 0 <= code <= 255:
            raise BadValue(f"not a list of exit codes from 0 to 255 (got {text!r})")
        codes.append(code)
    return codes


def signal_value(text: str) -> str | int:
    """'TERM', 'sigquit', '9' -> the name pyvisor writes ('TERM', 'QUIT', 'KILL'), or the
    number for a signal without a name."""
    try:
        number = parse_signal(text)
    except ValueError:
        raise BadValue(f"not a signal name or number (got {text!r})") from None
    try:
        return signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return number


def auto_restart(text: str) -> str:
    """supervisord's autorestart -> pyvisor's restart."""
    value = text.strip().lower()
    if value in TRUTHY:
        return "always"
    if value in FALSY:
        return "never"
    if value == "unexpected":
        return "on-failure"
    raise BadValue(f"not true, false or unexpected (got {text!r})")


def log_level(text: str) -> str:
    try:
        return LOG_LEVELS[text.strip().lower()]
    except KeyError:
        raise BadValue(f"not a log level (got {text!r}); use one of "
                       f"{', '.join(LOG_LEVELS)}") from None


MAX_ENVIRONMENT_TEXT = 64 * 1024


def environment(text: str) -> dict[str, str]:
    """``KEY="value, with commas",K2=v2`` -> {KEY: ..., K2: ...}, split as supervisord splits
    it: a non-POSIX shlex (quotes kept, then stripped from the value's ends; ``#`` starts a
    comment), in steps of key, '=', value, separator."""
    if len(text) > MAX_ENVIRONMENT_TEXT:      # shlex takes quadratic time (1 MB: 47 s)
        raise BadValue(f"{len(text):,} characters, more than pyvisor splits "
                       f"({MAX_ENVIRONMENT_TEXT:,}); pass large data in a file")
    lexer = shlex.shlex(text)
    lexer.wordchars += "/.+-():"
    try:
        tokens = list(lexer)
    except ValueError as e:
        raise BadValue(f"cannot split it: {str(e).lower()} (got {text!r})") from None
    env: dict[str, str] = {}
    for i in range(0, len(tokens), 4):
        key_eq_value = tokens[i:i + 3]
        if len(key_eq_value) != 3 or key_eq_value[1] != "=":
            raise BadValue(f"not KEY=value pairs separated by commas near {tokens[i]!r}; quote "
                           f"values with spaces or other punctuation (got {text!r})")
        env[key_eq_value[0]] = key_eq_value[2].strip("'\"")
    return env
