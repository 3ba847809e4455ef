"""supervisorctl restart TARGETS [--graceful | --signal]"""

from __future__ import annotations

import click

from supervisor.ctl import client
from supervisor.ctl.targets import TARGET


@click.command("restart")
@click.argument("targets", nargs=-1, required=True, type=TARGET)
@click.option(
    "--graceful/--signal",
    default=None,
    help="graceful: let each worker finish its unit of work (up to its graceful_timeout) "
    "before signals; signal: stop_signal at once. Default: each worker's stop_mode.",
)
@click.pass_obj
def cmd(session: client.Session, targets: tuple[str, ...], graceful: bool | None) -> None:
    """Stop TARGETS, start them again and wait until they are RUNNING."""
    client.run(session, "restart", targets, {"graceful": graceful, "wait": True})
