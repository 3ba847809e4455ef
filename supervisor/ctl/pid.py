"""supervisorctl pid [TARGETS] (the work is readonly.pid)"""

from __future__ import annotations

import click

from supervisor.ctl import client, readonly
from supervisor.ctl.targets import TARGET


@click.command("pid")
@click.argument("targets", nargs=-1, type=TARGET)
@click.pass_obj
def cmd(session: client.Session, targets: tuple[str, ...]) -> None:
    """Print supervisord's PID, or with TARGETS the PIDs of their processes."""
    readonly.pid(session, targets)
