"""supervisorctl status [TARGETS] [--json]"""

from __future__ import annotations

import os
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
    opts: dict[str, bool] = {"json": as_json}
    if not as_json and sys.stdout.isatty():     # a header and colours for people, not pipes
        opts["tty"] = True
        if not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb":
            opts["colour"] = True
    client.run(session, "status", targets or ("all",), opts)
