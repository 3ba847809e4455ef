"""supervisorctl stop TARGETS [--graceful | --signal] [--no-wait]"""

from __future__ import annotations

import click

from supervisor.ctl import client
from supervisor.ctl.targets import TARGET


@click.command("stop")
@click.argument("targets", nargs=-1, required=True, type=TARGET)
@click.option(
    "--graceful/--signal",
    default=None,
    help="graceful: let each worker finish its unit of work (up to its graceful_timeout) "
    "before signals; signal: stop_signal at once. Default: each worker's stop_mode.",
)
@click.option("--no-wait", is_flag=True, help="Return once the stop is requested.")
@click.pass_obj
def cmd(
    session: client.Session, targets: tuple[str, ...], graceful: bool | None, no_wait: bool
) -> None:
    """Stop TARGETS and wait until their processes are gone (exit 5 if one cannot be stopped)."""
    client.run(session, "stop", targets, {"graceful": graceful, "wait": not no_wait})
