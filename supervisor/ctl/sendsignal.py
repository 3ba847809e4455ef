"""supervisorctl signal SIGNAL TARGETS"""

from __future__ import annotations

import signal
from typing import Any

import click

from supervisor.ctl import client
from supervisor.ctl.targets import TARGET
from supervisor.names import parse_signal


class SignalType(click.ParamType):  # type: ignore[type-arg]  # generic only since click 8.5
    """HUP, SIGHUP, hup or 1 -> "SIGHUP" (the canonical name is what the daemon gets)."""

    name = "signal"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return signal.Signals(parse_signal(str(value))).name
        except ValueError:
            self.fail(f"{value!r} is not a signal (e.g. HUP, TERM, USR1, 15)", param, ctx)

@click.command("signal")
@click.argument("signame", metavar="SIGNAL", type=SignalType())
@click.argument("targets", nargs=-1, required=True, type=TARGET)
@click.pass_obj
def cmd(session: client.Session, signame: str, targets: tuple[str, ...]) -> None:
    """Send SIGNAL (HUP, SIGUSR1, 15, ...) to the main process of each of TARGETS.

    Only the process supervisord started gets it, not its children (as with kill PID)."""
    client.run(session, "signal", targets, {"signal": signame})
