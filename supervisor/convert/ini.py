"""Reading a supervisord.conf as supervisord reads it, keeping where every option came from.

supervisord's rules, followed here:

- The file is INI as Python's RawConfigParser reads it, with ``;`` and ``#`` starting an inline
  comment when whitespace comes before them, and repeated sections or options allowed (the
  later value wins). Option names are case-insensitive; a line that starts with whitespace
  continues the previous value.
- ``[include] files = ...`` of the main file lists whitespace-separated globs, relative to the
  main file's directory, read in sorted order into the same parser. A glob matching nothing is
  only a warning. An included file's own ``[include]`` is not followed. Bounded here (not by
  supervisord): the files matched, the directory entries looked at and the bytes read
  (includes.py); a FIFO or device is refused, never opened.
- After each file is read, ``%(here)s`` in every value read so far becomes the absolute
  directory of that file; the other ``%(...)s`` names are expanded later, option by option
  (values.expand), because they differ per section and per process.

Every problem supervisord would refuse the file for is a ConvertError naming the file and line.
"""

from __future__ import annotations

import configparser
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from supervisor.config.errors import clip
from supervisor.convert import includes
from supervisor.convert.includes import Budget, TooMany, bounded_glob
from supervisor.convert.values import BadValue, expand

HERE = "%(here)s"


class ConvertError(Exception):
    """A file supervisord would refuse too; each line names the file (and line) and the fault."""

    def __init__(self, lines: list[str]) -> None:
        lines = [clip(line) for line in lines]      # a 1 MB value: its start and its length
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class Location:
    file: str               # as the user would recognise it: the path given, or joined to it
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class Note:
    """What could not be carried over (or was changed on the way), and why: one stderr line
    ``FILE: [section] option: text``."""

    where: Location
    section: str
    option: str | None
    text: str

    def __str__(self) -> str:
        head = f"[{self.section}] {self.option}" if self.option else f"[{self.section}]"
        return clip(f"{self.where.file}: {head}: {self.text}")


@dataclass
class Conf:
    """Every section of a file and its includes, with raw values (``%(here)s`` done)."""

    path: str
    files: list[str] = field(default_factory=list)
    sections: dict[str, dict[str, str]] = field(default_factory=dict)
    headers: dict[str, Location] = field(default_factory=dict)       # first definition
    options: dict[tuple[str, str], Location] = field(default_factory=dict)
    here: dict[tuple[str, str], str] = field(default_factory=dict)   # option -> directory used
    notes: list[Note] = field(default_factory=list)

    @property
    def directory(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def where(self, section: str, option: str | None = None) -> Location:
        if option is not None and (section, option) in self.options:
            return self.options[section, option]
        return self.headers.get(section, Location(self.path))


def _parser(default_section: str = configparser.DEFAULTSECT) -> configparser.RawConfigParser:
    return configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False,
                                        default_section=default_section)


# An included file is read into a parser of its own, then merged: configparser re-joins the
# values of every section it holds after each read, so reading 3,000 files into one parser
# took minutes (quadratic). Its [DEFAULT] is an ordinary section there (no file can name a
# section with a NUL), and becomes the defaults when merged, as in one parser.
_OWN_DEFAULTS = "\0defaults"


def _read_included(parser: configparser.RawConfigParser, path: str) -> str:
    own = _parser(_OWN_DEFAULTS)
    text = _read_one(own, path)
    parser.read_dict({section: dict(own.items(section)) for section in own.sections()},
                     source=path)
    return text


MAX_CONF_BYTES = 4 * 1024 * 1024      # a supervisord.conf, however large, is far below


def _read_one(parser: configparser.RawConfigParser, path: str) -> str:
    try:
        # never a FIFO or device (it would block or never end; opening some has effects:
        # not opened at all), and a bounded size
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConvertError([_not_regular(path)])
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConvertError([_not_regular(path)])
            raw = os.read(fd, MAX_CONF_BYTES + 1)
        finally:
            os.close(fd)
        if len(raw) > MAX_CONF_BYTES:
            raise ConvertError([f"{path}: more than {MAX_CONF_BYTES} bytes; not a config file"])
        text = raw.decode("utf-8")
        if "\0" in text:
            line = text.count("\n", 0, text.index("\0")) + 1
            raise ConvertError([f"{path}:{line}: contains a NUL character (\\0), which no "
                                "command, path or value can hold; remove it"])
    except OSError as e:
        raise ConvertError([f"{path}: cannot read the file: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise ConvertError([f"{path}: not UTF-8 text (byte at offset {e.start})"]) from None
    lines = _lines(text)
    bad = _surely_bad(lines)
    if len(bad) > MAX_BAD_LINES:     # configparser's own report of them is quadratic
        _refuse_lines(path, lines, bad)
    try:
        parser.read_string(text, source=path)
    except configparser.MissingSectionHeaderError as e:
        raise ConvertError([f"{path}:{e.lineno}: the first setting comes before any [section] "
                            f"header (got {_shown(e.line)})"]) from None
    except configparser.ParsingError as e:
        _refuse_lines(path, lines, [n for n, _ in e.errors])
    except configparser.Error as e:
        raise ConvertError([f"{path}: {e.message}"]) from None
    return text


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0                   # (_read_one says why it cannot be read)


def _not_regular(path: str) -> str:
    return (f"{path}: not a regular file (a directory, FIFO, socket or device); a config "
            "file is a file")


MAX_BAD_LINES = 20     # lines shown of a file that is not INI (a log file a glob matched)


def _shown(line: str) -> str:
    line = line.strip()
    return repr(line) if len(line) <= 200 else f"{line[:200]!r}... ({len(line):,} characters)"


def _surely_bad(lines: list[str]) -> list[int]:
    """The lines that configparser refuses, found as it reads them (a header, then options,
    a line indented deeper than an option's continuing its value) but in linear time. It
    may miss some (a comment after '=' hides it here), never names a line it takes."""
    bad: list[int] = []
    section = option = False
    indent = 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        level = len(line) - len(line.lstrip())
        if option and level > indent:
            continue                                    # a continuation line
        indent = level
        if configparser.RawConfigParser.SECTCRE.match(stripped):
            section, option = True, False
            continue
        if not section:
            break                                       # configparser stops at this one
        match = configparser.RawConfigParser.OPTCRE.match(stripped)
        if match and match.group("option").strip():
            option = True
        else:
            bad.append(number)
    return bad


def _refuse_lines(path: str, lines: list[str], bad: list[int]) -> None:
    out = [f"{path}:{n}: not a 'key = value' line, a [section] header or a comment (got "
           f"{_shown(lines[n - 1])})" for n in bad[:MAX_BAD_LINES]]
    if len(bad) > MAX_BAD_LINES:
        out.append(f"{path}: and {len(bad) - MAX_BAD_LINES:,} more such lines: is it a "
                   "supervisord config file? (an [include] glob may match other files)")
    raise ConvertError(out) from None


def _lines(text: str) -> list[str]:
    """The lines as configparser counts them: split at \\n only (str.splitlines also splits
    at \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028 and \\u2029, which configparser keeps in a value)."""
    return text.split("\n")


def _scan(path: str, text: str) -> Iterator[tuple[str, str | None, int]]:
    """(section, option or None for the header, line) of every header and option in a file,
    by configparser's own patterns (it keeps no line numbers itself)."""
    section = ""
    in_value = False
    for number, line in enumerate(_lines(text), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        if line[0].isspace() and in_value:
            continue                                    # a continuation line
        header = configparser.RawConfigParser.SECTCRE.match(stripped)
        if header:
            section = header.group("header")
            in_value = False
            yield section, None, number
            continue
        option = configparser.RawConfigParser.OPTCRE.match(stripped)
        if option and section:
            in_value = True
            yield section, option.group("option").strip().lower(), number


def _expand_here(parser: configparser.RawConfigParser, conf: Conf, here: str,
                 sections: Iterable[str] | None = None) -> None:
    """supervisord's expand_here, after each file: ``%(here)s`` in every value read so far
    (defaults included, as each section sees them) becomes ``here``. Only ``sections`` (the
    ones the file just read names) can hold one, unless a default does: then all of them."""
    if sections is None or any(HERE in v for v in parser.defaults().values()):
        sections = parser.sections()
    for section in sections:
        for key, value in parser.items(section):
            if HERE in value:
                parser.set(section, key, value.replace(HERE, here))
                conf.here[section, key] = here


def _record(conf: Conf, path: str, text: str) -> dict[str, int]:
    """Note where each header and option is; returns this file's sections and header lines."""
    conf.files.append(path)
    seen: dict[str, int] = {}
    for section, option, line in _scan(path, text):
        if option is None:
            seen.setdefault(section, line)
            conf.headers.setdefault(section, Location(path, line))
        else:
            conf.options[section, option] = Location(path, line)
    return seen


def _include_patterns(parser: configparser.RawConfigParser, conf: Conf,
                      names: Mapping[str, object]) -> list[str]:
    where = conf.where("include", "files")
    if not parser.has_option("include", "files"):
        raise ConvertError([f"{conf.where('include')}: [include] has no files= setting "
                            "(supervisord refuses this too)"])
    try:
        text, _ = expand(parser.get("include", "files"), names)
    except BadValue as e:
        raise ConvertError([f"{where}: [include] files: {e}"]) from None
    return text.split()


def read(path: str, environ: Mapping[str, str], hostname: str) -> Conf:
    """Read ``path`` and the files its [include] names (ConvertError for a file supervisord
    would refuse)."""
    conf = Conf(path)
    parser = _parser()
    _record(conf, path, _read_one(parser, path))
    _expand_here(parser, conf, conf.directory)
    if parser.has_section("include"):
        names: dict[str, object] = {f"ENV_{k}": v for k, v in environ.items()}
        names.update(here=conf.directory, host_node_name=hostname)
        base = os.path.dirname(path)
        where = conf.where("include", "files")
        budget, total = Budget(), 0
        for pattern in _include_patterns(parser, conf, names):
            full = os.path.join(base, pattern)
            try:
                found = sorted(bounded_glob(full, budget))
            except TooMany as e:
                raise ConvertError([f"{where}: [include] files: {full} {e} (with the globs "
                                    "before it), the most the converter follows; name fewer "
                                    "files (e.g. conf.d/*.conf, not /**/*.conf)"]) from None
            if not found:
                conf.notes.append(Note(where, "include", "files", f"no file matches {full}; "
                                       "nothing included from it (supervisord only warns too)"))
            for name in found:
                total += _size(name)       # (each read is bounded too: MAX_CONF_BYTES)
                if total > includes.MAX_TOTAL_BYTES:
                    raise ConvertError([f"{where}: [include] files: the files included come "
                                        f"to more than {includes.MAX_TOTAL_BYTES} bytes (at "
                                        f"{name}), the most the converter reads; name fewer "
                                        "files"])
                seen = _record(conf, name, _read_included(parser, name))
                _expand_here(parser, conf, os.path.dirname(os.path.abspath(name)),
                             [s for s in seen if parser.has_section(s)])
                if "include" in seen:
                    conf.notes.append(Note(Location(name, seen["include"]), "include", None,
                                           "not followed: supervisord follows only the main "
                                           "file's [include]"))
    for section in parser.sections():
        conf.sections[section] = dict(parser.items(section))
    return conf
