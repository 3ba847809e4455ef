"""supervisorctl status [TARGETS] [--json] [-v]"""

from __future__ import annotations

import json
import os
import sys

import click

from supervisor.control.protocol import NOT_RUNNING
from supervisor.ctl import client
from supervisor.ctl.targets import TARGET


@click.command("status")
@click.argument("targets", nargs=-1, type=TARGET)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("-v", "--verbose", is_flag=True,
              help="Also show each worker's whole status text, counters and gauges.")
@click.pass_obj
def cmd(session: client.Session, targets: tuple[str, ...], as_json: bool,
        verbose: bool) -> None:
    """Show the state of TARGETS (default: all)."""
    opts: dict[str, bool] = {"json": as_json}
    if verbose:
        opts["verbose"] = True
    if not as_json and sys.stdout.isatty():     # a header and colours for people, not pipes
        opts["tty"] = True
        if not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb":
            opts["colour"] = True
    try:
        reply = client.request(session, "status", targets or ("all",), opts)
    except client.CtlError as e:
        alive = _still_alive(session) if e.exit_code == NOT_RUNNING else ""
        if alive:
            raise client.CtlError(e.exit_code, e.message + alive) from None
        raise
    if not as_json or reply.out or reply.err or not isinstance(reply.data, list):
        client.emit(reply)
    # one row per line: readable, and each row encoded by json's C encoder (indent= would
    # take its pure-Python one: seconds at 10,000 instances)
    rows = reply.data
    sys.stdout.write("[\n" + ",\n".join(json.dumps(r) for r in rows) + ("\n]\n" if rows
                                                                        else "]\n"))
    sys.stdout.flush()
    raise SystemExit(reply.code)


def _still_alive(session: client.Session) -> str:
    """With the daemon down: the workers that still run (from their control blocks)."""
    _shown, config = session.config_file()
    if not os.path.isfile(config):
        return ""
    from supervisor.ctl import offline  # the slow path: blocks and the config

    alive = offline.describe_alive(config)
    return f"\nsupervisorctl: {alive}" if alive else ""
