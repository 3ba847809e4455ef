"""supervisorctl restart TARGETS [--graceful]"""

from __future__ import annotations

import click

from supervisor.ctl import client
from supervisor.ctl.targets import TARGET


@click.command("restart")
@click.argument("targets", nargs=-1, required=True, type=TARGET)
@click.option(
    "--graceful",
    is_flag=True,
    help="Let each worker finish its unit of work (up to its graceful deadline) before signals.",
)
@click.pass_obj
def cmd(session: client.Session, targets: tuple[str, ...], graceful: bool) -> None:
    """Stop TARGETS, start them again and wait until they are RUNNING."""
    client.run(session, "restart", targets, {"graceful": graceful, "wait": True})
