"""The globs of ``[include] files``, bounded: glob.glob's matches (what supervisord reads), made
by a walk that counts what it looks at, so that ``/*/*/*/*.conf`` or a directory of 100,000
files stops with an error naming the include line and the limit instead of running for minutes
or reading gigabytes.

As glob.glob without ``recursive``: ``**`` is ``*``, a name starting with ``.`` is matched only
by a pattern component that starts with ``.``, a component without magic is looked up rather
than listed, an intermediate match must be a directory (symlinks followed), and a pattern
without magic matches itself when it exists (os.path.lexists).
"""

from __future__ import annotations

import fnmatch
import os
import re

MAX_FILES = 10_000           # files the globs of one [include] may match, together
MAX_ENTRIES = 200_000        # directory entries they may look at, together
MAX_TOTAL_BYTES = 64 * 1024 * 1024   # bytes read from the included files, together

_MAGIC = re.compile(r"[*?[]")


class TooMany(Exception):
    """str(): what was exceeded, in words for the error line."""


class Budget:
    """What the globs of one [include] may still match and look at."""

    def __init__(self, files: int | None = None, entries: int | None = None) -> None:
        self.max_files = files = MAX_FILES if files is None else files
        self.max_entries = entries = MAX_ENTRIES if entries is None else entries
        self.files, self.entries = files, entries

    def entry(self) -> None:
        self.entries -= 1
        if self.entries < 0:
            raise TooMany(f"looks at more than {self.max_entries} directory entries")

    def match(self) -> None:
        self.files -= 1
        if self.files < 0:
            raise TooMany(f"matches more than {self.max_files} files")


def bounded_glob(pattern: str, budget: Budget) -> list[str]:
    """glob.glob(pattern), raising TooMany past the budget."""
    if not _MAGIC.search(pattern):
        if os.path.lexists(pattern):
            budget.match()
            return [pattern]
        return []
    dirname, base = os.path.split(pattern)
    if not dirname:
        dirs = [""]
    elif dirname != pattern and _MAGIC.search(dirname):
        dirs = [d for d in _dirs(dirname, budget) if os.path.isdir(d)]
    else:
        dirs = [dirname] if os.path.isdir(dirname) else []
    found: list[str] = []
    for d in dirs:
        if not _MAGIC.search(base):
            path = os.path.join(d, base)
            if (os.path.isdir(d) if not base else os.path.lexists(path)):
                budget.match()
                found.append(path)
            continue
        for name in _names(d or os.curdir, budget):
            if (base.startswith(".") or not name.startswith(".")) and fnmatch.fnmatchcase(
                    name, base):
                budget.match()
                found.append(os.path.join(d, name))
    return found


def _dirs(pattern: str, budget: Budget) -> list[str]:
    """The directories matching an intermediate pattern: they do not count as files (there
    are no more of them than entries looked at), the entries they look at do."""
    inner = Budget(budget.entries + 1, budget.entries)
    inner.max_entries = budget.max_entries
    try:
        return bounded_glob(pattern, inner)
    finally:
        budget.entries = inner.entries


def _names(directory: str, budget: Budget) -> list[str]:
    names = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                budget.entry()
                names.append(entry.name)
    except OSError:          # unreadable: glob.glob skips it too
        return []
    return names
