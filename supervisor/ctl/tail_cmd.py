"""supervisorctl tail TARGET [-f] [--stdout | --stderr] [-n LINES] (the work is tail.run)"""

from __future__ import annotations

import click

from supervisor.ctl import client, tail
from supervisor.ctl.targets import FOLLOW, TARGET, lines_option


@click.command("tail")
@click.argument("target", type=TARGET)
@FOLLOW
@click.option("--stdout", "only", flag_value="stdout", help="Only the stdout log.")
@click.option("--stderr", "only", flag_value="stderr", help="Only the stderr log.")
@lines_option("Print the last LINES lines first.")
@click.pass_obj
def cmd(
    session: client.Session, target: str, follow: bool, only: str | None, lines: int
) -> None:
    """Print the end of TARGET's stdout and stderr logs (e.g. web:0).

    Each file comes under a ==> FILE <== header when they are two."""
    tail.run(session, target, follow, only, lines)
