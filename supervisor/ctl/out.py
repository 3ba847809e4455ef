"""Writing to stdout/stderr as click.echo does, for the paths that run without importing click.

The fast path of supervisorctl (supervisor.ctl.main) must print byte for byte what the click
CLI prints, so this reproduces what click.echo does with text on Linux: a newline unless told
not to, ANSI escape sequences removed when the stream is not a terminal, a stream configured
for ASCII written as UTF-8 with unencodable characters replaced, a flush after every write. It
also reproduces what click does when stdout is a closed pipe (``supervisorctl status | head``):
exit 1 without a traceback. tests/e2e/test_ctl_fastpath.py compares the two paths.
"""

from __future__ import annotations

import codecs
import errno
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:   # typing stays out of supervisorctl's start-up
    from typing import Any, TextIO

# the pattern click strips when the output is not a terminal (click._compat._ansi_re); re is
# imported only for a text that has an ESC in it (status on a pipe has none, unless a worker
# put one in its status text)
_ANSI = r"\033\[[0-?]*[ -/]*[@-~]"


def echo(text: str, *, err: bool = False, nl: bool = True) -> None:
    stream = sys.stderr if err else sys.stdout
    if stream is None:
        return
    if nl:
        text += "\n"
    if not text:
        stream.flush()
        return
    if "\033" in text and not _isatty(stream):
        import re

        text = re.sub(_ANSI, "", text)
    if _is_ascii(stream) and hasattr(stream, "buffer"):
        stream.flush()
        stream.buffer.write(text.encode("utf-8", "replace"))
        stream.buffer.flush()
        return
    stream.write(text)
    stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except Exception:
        return False


def _is_ascii(stream: TextIO) -> bool:
    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "ascii"
    except LookupError:
        return False


class _PacifyFlush:
    """A stream whose flush ignores EPIPE: the interpreter's last flush of a stdout whose
    reader has gone must not print a traceback (click's _PacifyFlushWrapper)."""

    def __init__(self, wrapped: TextIO) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        try:
            self.wrapped.flush()
        except OSError as e:
            if e.errno != errno.EPIPE:
                raise

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.wrapped, attr)


def pacify_streams() -> None:
    """After EPIPE on stdout: keep both streams from failing at exit."""
    sys.stdout = _PacifyFlush(sys.stdout)
    sys.stderr = _PacifyFlush(sys.stderr)
