"""supervisorctl start TARGETS [--no-wait]"""

from __future__ import annotations

import click

from supervisor.ctl import client
from supervisor.ctl.targets import TARGET


@click.command("start")
@click.argument("targets", nargs=-1, required=True, type=TARGET)
@click.option("--no-wait", is_flag=True, help="Return once the start is requested.")
@click.pass_obj
def cmd(session: client.Session, targets: tuple[str, ...], no_wait: bool) -> None:
    """Start TARGETS and wait until they are RUNNING (exit 5 if one cannot start)."""
    client.run(session, "start", targets, {"wait": not no_wait})
