"""The TARGET argument type shared by the verbs: ``NAME``, ``NAME:INDEX`` or ``all``.

Completion asks a running daemon for its instance names (``status --json``) and offers nothing,
silently, when no daemon answers within a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem

from supervisor.ctl.main import TAIL_LINES
from supervisor.ctl.readonly import is_target

COMPLETION_TIMEOUT = 0.5


class TargetType(click.ParamType):  # type: ignore[type-arg]  # generic only since click 8.5
    name = "target"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not is_target(text):
            self.fail(f"{text!r} is not a target: give NAME, NAME:INDEX or all", param, ctx)
        return text

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        return [CompletionItem(n) for n in known_targets(ctx) if n.startswith(incomplete)]


TARGET = TargetType()

F = TypeVar("F", bound=Callable[..., Any])

# the options tail and logs share
FOLLOW: Callable[[F], F] = click.option(
    "-f", "--follow", is_flag=True, help="Keep printing what is appended (Ctrl-C ends).")


def lines_option(help: str) -> Callable[[F], F]:
    return click.option("-n", "--lines", type=click.IntRange(min=0), default=TAIL_LINES,
                        show_default=True, help=help)


def known_targets(ctx: click.Context) -> list[str]:
    """'all', the worker names and the instance names of the running daemon; [] if none."""
    from supervisor.ctl import client

    root = ctx.find_root()
    session = client.Session(
        config=root.params.get("config"),
        timeout=COMPLETION_TIMEOUT,
        connect_timeout=COMPLETION_TIMEOUT,
    )
    try:
        reply = client.request(session, "status", ["all"], {"json": True})
    except (client.CtlError, OSError, ValueError):
        return []
    if reply.code != 0:
        return []
    return ["all", *names_from_status(reply.data)]


def names_from_status(data: Any) -> list[str]:
    """Worker and instance names from status data: {"instances": [{"name": "web:0"}, ...]}."""
    items = data.get("instances") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return []
    names: list[str] = []
    for item in items:
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str):
            group = name.partition(":")[0]
            if group not in names:
                names.append(group)
            if name not in names:
                names.append(name)
    return names
