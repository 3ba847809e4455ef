"""Names every part of pyvisor spells the same way: instances (``web:0``) and signals.

Standard library only: supervisorctl imports it, and it must start fast.
"""

from __future__ import annotations

import signal

SIGNAL_NAMES = tuple(s.name[3:] for s in signal.Signals)   # "HUP", "INT", ... (no aliases)
SIGNAL_MAX = int(signal.SIGRTMAX)
SIGRTMIN = int(signal.SIGRTMIN)


def instance_name(worker: str, index: int) -> str:
    """The name of instance ``index`` of ``worker``: "web:0"."""
    return f"{worker}:{index}"


def split_instance_name(name: str) -> tuple[str, int | None]:
    """"web:0" -> ("web", 0); "web" -> ("web", None); "web:x" -> ("web:x", None)."""
    worker, sep, index = name.rpartition(":")
    if sep and index.isascii() and index.isdigit() and len(index) <= 9:
        return worker, int(index)
    return name, None


def parse_signal(value: str | int) -> int:
    """'TERM', 'SIGTERM', 'term', 15 or '15' -> 15; ValueError for anything else (numbers
    outside 1..SIGRTMAX included)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"not a signal: {value!r}")
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 3:
        text = int(text)
    if isinstance(text, int):
        # 32 .. SIGRTMIN-1 are the C library's own (thread cancellation, setxid)
        if 1 <= text < 32 or SIGRTMIN <= text <= SIGNAL_MAX:
            return text
        raise ValueError(f"not a signal a worker can be sent: {value!r} (1..31, "
                         f"{SIGRTMIN}..{SIGNAL_MAX})")
    name = text.upper()
    try:
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise ValueError(f"not a signal: {value!r}") from None


def signal_name(signum: int) -> str:
    """15 -> "SIGTERM"; a real-time signal (no name of its own) -> "SIGRTMIN+6"."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


def ctl_command() -> str:
    """How hints spell supervisorctl: its name when PATH finds this one, else its path (a
    venv that is not activated). The daemon's; the imports stay out of supervisorctl's way."""
    import os
    import shlex
    import shutil
    import sys

    ours = os.path.join(os.path.dirname(sys.executable), "supervisorctl")
    if not os.access(ours, os.X_OK):
        return "supervisorctl"
    on_path = shutil.which("supervisorctl")
    same = on_path is not None and os.path.realpath(on_path) == os.path.realpath(ours)
    return "supervisorctl" if same else shlex.quote(ours)
