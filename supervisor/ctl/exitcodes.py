"""Exit codes of supervisorctl: the one place that defines them.

The daemon decides the code of every reply (it imports this module); the client decides only
the codes of failures it sees itself (no daemon, time-out, interrupted) and click's usage errors.
"""

from __future__ import annotations

from enum import IntEnum


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
