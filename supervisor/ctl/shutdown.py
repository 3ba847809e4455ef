"""supervisorctl shutdown [--no-wait]"""

from __future__ import annotations

import click

from supervisor.ctl import client


@click.command("shutdown")
@click.option("--no-wait", is_flag=True, help="Return once the shutdown is requested.")
@click.pass_obj
def cmd(session: client.Session, no_wait: bool) -> None:
    """Stop every worker, then supervisord itself; waits until the workers are gone."""
    client.run(session, "shutdown", (), {"wait": not no_wait})
