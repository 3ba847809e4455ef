"""supervisorctl stop TARGETS [--graceful] [--no-wait]"""

from __future__ import annotations

import click

from supervisor.ctl import client
from supervisor.ctl.targets import TARGET


@click.command("stop")
@click.argument("targets", nargs=-1, required=True, type=TARGET)
@click.option(
    "--graceful",
    is_flag=True,
    help="Let each worker finish its unit of work (up to its graceful deadline) before signals.",
)
@click.option("--no-wait", is_flag=True, help="Return once the stop is requested.")
@click.pass_obj
def cmd(session: client.Session, targets: tuple[str, ...], graceful: bool, no_wait: bool) -> None:
    """Stop TARGETS and wait until their processes are gone (exit 5 if one cannot be stopped)."""
    client.run(session, "stop", targets, {"graceful": graceful, "wait": not no_wait})
