"""supervisorctl status [TARGETS] [--json]"""

from __future__ import annotations

import json
import sys

import click

from supervisor.ctl import client
from supervisor.ctl.targets import TARGET


@click.command("status")
@click.argument("targets", nargs=-1, type=TARGET)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_obj
def cmd(session: client.Session, targets: tuple[str, ...], as_json: bool) -> None:
    """Show the state of TARGETS (default: all)."""
    if not as_json:
        client.run(session, "status", targets or ("all",), {"json": False})
    reply = client.request(session, "status", targets or ("all",), {"json": True})
    if reply.out or reply.err or not isinstance(reply.data, list):
        client.emit(reply)
    # one row per line: readable, and each row encoded by json's C encoder (indent= would
    # take its pure-Python one: seconds at 10,000 instances)
    rows = reply.data
    sys.stdout.write("[\n" + ",\n".join(json.dumps(r) for r in rows) + ("\n]\n" if rows
                                                                        else "]\n"))
    sys.stdout.flush()
    raise SystemExit(reply.code)
