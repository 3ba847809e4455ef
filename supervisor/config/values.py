"""Parsers for the config's scalar values that YAML cannot type by itself: signals, sizes,
socket modes, commands, exit codes, worker and user names. Each takes what the file held and
returns the value the daemon uses, or raises ``problem(...)`` with the message the user sees.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import string
from collections.abc import Callable
from typing import Any

from supervisor.config.errors import got, problem
from supervisor.names import SIGNAL_MAX, SIGNAL_NAMES, parse_signal
from worker import block as blk

WORKER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# what the control commands read as a target of their own: `stop all` means every worker
RESERVED_NAMES = frozenset({"all"})


def is_worker_name(name: str) -> bool:
    return WORKER_NAME.fullmatch(name) is not None and name not in RESERVED_NAMES
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
PLACEHOLDERS = ("name", "index", "instance", "log_dir")
# Binary units, as supervisord and logrotate count them: 1KB = 1KiB = 1024 bytes.
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])i?)?b?", re.IGNORECASE)
_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
SOCKET_MODES = (0o600, 0o660)
MAX_BYTES = 1 << 40          # a log file rotated at 1 TiB at most
MAX_ARG = 128 * 1024         # the kernel's MAX_ARG_STRLEN: exec fails on a longer argument
MAX_COMMAND_TEXT = 32 * 1024  # shlex.split takes quadratic time; longer commands: use a list


def _no_bool(value: Any, what: str) -> None:
    if isinstance(value, bool):
        raise problem(f"must be {what} (got {got(value)})")


def signal_number(value: Any) -> int:
    """'TERM', 'SIGTERM', 'term', 15 or '15' -> 15."""
    _no_bool(value, "a signal name or number")
    if isinstance(value, str | int):
        try:
            return parse_signal(value)
        except ValueError:
            pass
    raise problem(f"unknown signal {got(value)}; use one of {', '.join(SIGNAL_NAMES)} "
                  f"(with or without SIG) or a number from 1 to {SIGNAL_MAX}")


def byte_size(value: Any) -> int:
    """1048576, '10MB', '512KB', '1GiB', '1.5 G' -> bytes. 0 means no rotation."""
    _no_bool(value, "a size")
    size: float | None = None
    if isinstance(value, int) and value >= 0:
        size = value
    elif isinstance(value, str) and len(value) <= 100:
        m = _SIZE.fullmatch(value.strip())
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            size = float(m.group(1)) * _UNITS[unit]
    if size is not None:
        if size > MAX_BYTES:        # also inf, from a string of 400 digits
            raise problem(f"must be at most 1TiB ({MAX_BYTES} bytes) (got {got(value)})")
        return int(size)
    raise problem(f"must be a number of bytes or a size such as '10MB', '512KB', '1GiB' "
                  f"(got {got(value)})")


def socket_mode(value: Any) -> int:
    """Read as octal, like chmod: '0600', '600', '0o660' (YAML text) or an int mode."""
    _no_bool(value, "'0600' or '0660'")
    mode: int | None = value if isinstance(value, int) else None
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        mode = int(text, 8) if re.fullmatch(r"[0-7]{3,4}", text) else None
    if mode not in SOCKET_MODES:
        raise problem(f"must be '0600' or '0660' (got {got(value)})")
    return mode


# A command without quotes or backslashes: shlex splits it at its whitespace (space, tab, CR,
# LF) and nowhere else, which a regex does 20x faster (a 10,000-worker config has as many).
_PLAIN = re.compile(r"[^'\"\\]*")
_PLAIN_WORDS = re.compile(r"[ \t\r\n]+")


def command(value: Any) -> tuple[str, ...]:
    """A list of strings, or one string split like a shell would (no shell is run)."""
    if isinstance(value, str):
        if len(value) > MAX_COMMAND_TEXT:
            raise problem(f"a command string of {len(value):,} characters is too long (at most "
                          f"{MAX_COMMAND_TEXT:,}); write the command as a list")
        try:
            parts = [w for w in _PLAIN_WORDS.split(value) if w] if _PLAIN.fullmatch(value) \
                else shlex.split(value)
        except ValueError as e:
            raise problem(f"cannot split the command: {str(e).lower()} "
                          f"(got {got(value)})") from None
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise problem(f"every item must be a string (item {i} is {got(item)})")
        parts = list(value)
    else:
        raise problem(f"must be a string or a list of strings (got {got(value)})")
    if not parts or not parts[0]:
        raise problem("must name a program to run (got an empty command)")
    for i, part in enumerate(parts):
        no_nul(part)
        if len(part) > MAX_ARG:
            raise problem(f"item {i} is {len(part):,} characters long; exec refuses an argument "
                          f"longer than {MAX_ARG:,}")
    return tuple(parts)


def no_nul(value: str) -> str:
    """What goes to exec, open or the environment cannot hold a NUL (the file cannot either:
    yamlfile refuses it; this is for models made in Python)."""
    if "\0" in value:
        raise problem(f"must not contain a NUL character (\\0) (got {got(value)})")
    return value


def exit_codes(value: Any) -> frozenset[int]:
    items = value if isinstance(value, list | tuple | set | frozenset) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= 255:
            raise problem(f"must be a list of exit codes from 0 to 255 (got {got(item)})")
    return frozenset(items)


def env_value(value: Any) -> str:
    """YAML gives the text as written; Python callers may pass plain scalars."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, str):
        return no_nul(value)
    if isinstance(value, int | float):
        return str(value)
    raise problem(f"must be a string (got {got(value)})")


def env_name(name: str) -> str:
    if not name or "=" in name or "\0" in name or "\n" in name:
        raise problem(f"invalid environment variable name {got(name)}")
    return name


def worker_name(name: str) -> str:
    if name in RESERVED_NAMES:
        raise problem(f"the worker name {got(name)} is reserved: `supervisorctl stop {name}` "
                      "means every worker; choose another name")
    if not is_worker_name(name):
        raise problem(f"invalid worker name {got(name)}: use 1-64 characters from A-Z a-z 0-9 "
                      "_ . - (not starting with . or -)")
    return name


def block_prefix(value: str) -> str:
    if not blk.valid_prefix(value):   # the block module's rule, so that spawns cannot fail on it
        raise problem(f"must be {blk.PREFIX_RULE} (got {got(value)})")
    return value


def log_level(value: Any) -> str:
    if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
        return value.strip().upper()
    raise problem(f"must be one of {', '.join(LOG_LEVELS)} (got {got(value)})")


def _number(value: str) -> int | None:
    """A uid or gid written as text ('65534', what supervisord's user= takes and --convert
    writes): tried after the name, as chown(1) does, so a user named by digits still wins."""
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 10 else None


def user_name(value: Any) -> str:
    """A user name or uid that exists on this machine -> the user name. A uid without a
    passwd entry is refused: it has no groups to take, no HOME, and nobody to own its files."""
    return _account(value, "user", lambda uid: pwd.getpwuid(uid).pw_name,
                    lambda name: pwd.getpwnam(name).pw_name)


def group_name(value: Any) -> str:
    """A group name or gid that exists on this machine -> the group name."""
    return _account(value, "group", lambda gid: grp.getgrgid(gid).gr_name,
                    lambda name: grp.getgrnam(name).gr_name)


def _account(value: Any, what: str, by_id: Callable[[int], str],
             by_name: Callable[[str], str]) -> str:
    _no_bool(value, f"a {what} name")
    if isinstance(value, str):
        no_nul(value)
    try:
        if isinstance(value, int):
            return by_id(value)
        if isinstance(value, str):
            try:
                return by_name(value)
            except KeyError:
                if (number := _number(value)) is None:
                    raise
                return by_id(number)
    except (KeyError, OverflowError):
        raise problem(f"no such {what} on this machine (got {got(value)})") from None
    raise problem(f"must be a {what} name (got {got(value)})")


def umask(value: Any) -> int:
    """Read as octal, like umask(1): '022', '0o027', '77' (YAML text); an int from Python is
    taken as the mode itself."""
    _no_bool(value, "an octal umask such as '022'")
    mask: int | None = value if isinstance(value, int) and 0 <= value <= 0o777 else None
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        mask = int(text, 8) if re.fullmatch(r"[0-7]{1,4}", text) else None
    if mask is None or mask > 0o777:
        raise problem(f"must be an octal umask from '000' to '777', such as '022' "
                      f"(got {got(value)})")
    return mask


# Output that goes to no file: discarded, or (the word in the config) to the daemon's stdout.
DISCARD = "/dev/null"
TO_DAEMON = "daemon"
_DEVICE_DIRS = ("/dev/", "/proc/", "/sys/")


def log_template(value: str) -> str:
    """A log path may use {name} {index} {instance} {log_dir}; nothing else in braces."""
    no_nul(value)
    allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value)
                  if f is not None]
    except ValueError as e:
        raise problem(f"{e} (write {{{{ and }}}} for literal braces; "
                      f"placeholders: {allowed}) (got {got(value)})") from None
    for field, spec, conv in fields:
        if field not in PLACEHOLDERS or spec or conv:
            raise problem(f"unknown placeholder {{{field}}}; use {allowed} (got {got(value)})")
    if not value:
        raise problem("must not be empty (null means the default path)")
    normal = os.path.normpath(value)
    if normal != DISCARD and normal.startswith(_DEVICE_DIRS):
        raise problem(f"{value} is not a file; output goes to regular files. To send it to "
                      f"the daemon's stdout (containers): {TO_DAEMON}; to discard it: null, "
                      f"e.g. stdout: {TO_DAEMON}")
    return value


_PLACEHOLDER = re.compile(r"\{\{(index|name|instance)\}\}|\{(index|name|instance)\}")


def expand(text: str, fields: dict[str, str]) -> str:
    """{index}, {name} and {instance} in a command or environment value, for one instance;
    {{index}} is the literal text {index}, and every other brace is left as written (a shell
    script's ${VAR} or an awk program keeps its braces)."""
    if "{" not in text:
        return text
    return _PLACEHOLDER.sub(
        lambda m: "{" + m.group(1) + "}" if m.group(1) else fields[m.group(2)], text)
