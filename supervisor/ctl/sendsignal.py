"""supervisorctl signal SIGNAL TARGETS"""

from __future__ import annotations

import signal
from typing import Any

import click

from supervisor.ctl import client
from supervisor.ctl.targets import TARGET


class SignalType(click.ParamType):  # type: ignore[type-arg]  # generic only since click 8.5
    """HUP, SIGHUP, hup or 1 -> "SIGHUP" (the canonical name is what the daemon gets)."""

    name = "signal"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().upper()
        try:
            if text.isdigit():
                return signal.Signals(int(text)).name
            name = text if text.startswith("SIG") else f"SIG{text}"
            return signal.Signals[name].name
        except (KeyError, ValueError):
            self.fail(f"{value!r} is not a signal (e.g. HUP, TERM, USR1, 15)", param, ctx)


@click.command("signal")
@click.argument("signame", metavar="SIGNAL", type=SignalType())
@click.argument("targets", nargs=-1, required=True, type=TARGET)
@click.pass_obj
def cmd(session: client.Session, signame: str, targets: tuple[str, ...]) -> None:
    """Send SIGNAL (HUP, SIGUSR1, 15, ...) to the processes of TARGETS."""
    client.run(session, "signal", targets, {"signal": signame})
