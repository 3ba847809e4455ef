"""supervisorctl reexec"""

from __future__ import annotations

import click

from supervisor.ctl import client


@click.command("reexec")
@click.pass_obj
def cmd(session: client.Session) -> None:
    """Re-execute supervisord in place (an upgrade); the workers keep running."""
    client.run(session, "reexec")
