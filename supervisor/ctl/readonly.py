"""The work of ``status`` and ``pid``, importable without click.

Two front ends call these functions and nothing else does their work: the click commands
(supervisor.ctl.status, supervisor.ctl.pid) and the fast path of the entry point
(supervisor.ctl.main), which recognises simple argument shapes of these verbs and so runs them
without importing click. A TARGET is checked here by the same pattern for both.
"""

from __future__ import annotations

import os
import sys

from supervisor.control.wire import NOT_RUNNING
from supervisor.ctl import client
from supervisor.jsonlite import dumps

TYPE_CHECKING = False
if TYPE_CHECKING:   # typing stays out of supervisorctl's start-up
    from collections.abc import Sequence
    from typing import NoReturn

# A TARGET is "all" or, as a whole, [A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(:[0-9]{1,6})? -- checked
# without re, whose import costs a tenth of supervisorctl's start-up
_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_NAME_REST = _NAME_FIRST | frozenset(".-")
_DIGITS = frozenset("0123456789")
MAX_TARGET_NAME = 64
MAX_TARGET_INDEX = 6    # digits


def is_target(text: str) -> bool:
    """NAME, NAME:INDEX or all (the TARGET argument of every verb)."""
    if text == "all":
        return True
    name, colon, index = text.partition(":")
    return (0 < len(name) <= MAX_TARGET_NAME and name[0] in _NAME_FIRST
            and _NAME_REST.issuperset(name)
            and (not colon or (0 < len(index) <= MAX_TARGET_INDEX
                               and _DIGITS.issuperset(index))))


def status(session: client.Session, targets: Sequence[str], as_json: bool,
           verbose: bool) -> NoReturn:
    """supervisorctl status: the daemon renders the rows; --json prints them one per line."""
    opts: dict[str, bool] = {"json": as_json}
    if verbose:
        opts["verbose"] = True
    if not as_json and sys.stdout.isatty():     # a header and colours for people, not pipes
        opts["tty"] = True
        if not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb":
            opts["colour"] = True
    try:
        reply = client.request(session, "status", tuple(targets) or ("all",), opts)
    except client.CtlError as e:
        alive = _still_alive(session) if e.exit_code == NOT_RUNNING else ""
        if alive:
            raise client.CtlError(e.exit_code, e.message + alive) from None
        raise
    if not as_json or reply.out or reply.err or not isinstance(reply.data, list):
        client.emit(reply)
    # one row per line: readable, and each row encoded by json's C encoder (indent= would
    # take its pure-Python one: seconds at 10,000 instances); jsonlite.dumps is json.dumps
    # without its per-call set-up
    rows = reply.data
    sys.stdout.write("[\n" + ",\n".join(dumps(r) for r in rows) + ("\n]\n" if rows
                                                                        else "]\n"))
    sys.stdout.flush()
    raise SystemExit(reply.code)


def pid(session: client.Session, targets: Sequence[str]) -> NoReturn:
    """supervisorctl pid: the daemon's PID, or the PIDs of TARGETS' processes."""
    client.run(session, "pid", tuple(targets))


def _still_alive(session: client.Session) -> str:
    """With the daemon down: the workers that still run (from their control blocks)."""
    _shown, config = session.config_file()
    if not os.path.isfile(config):
        return ""
    from supervisor.ctl import offline  # the slow path: blocks and the config

    alive = offline.describe_alive(config)
    return f"\nsupervisorctl: {alive}" if alive else ""
