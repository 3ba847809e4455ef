"""supervisorctl status [TARGETS] [--json] [-v] (the work is readonly.status)"""

from __future__ import annotations

import click

from supervisor.ctl import client, readonly
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
    readonly.status(session, targets, as_json, verbose)
