"""supervisorctl reload"""

from __future__ import annotations

import click

from supervisor.ctl import client


@click.command("reload")
@click.pass_obj
def cmd(session: client.Session) -> None:
    """Re-read the config and apply it; waits until done (exit 7 if the config is invalid)."""
    client.run(session, "reload")
