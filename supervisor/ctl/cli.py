"""supervisorctl's commands and options, defined once, in click.

Each verb lives in its own module and sends one request; supervisord does the work and renders
the text, which is printed verbatim, and decides the exit code (defined in
supervisor.control.protocol). The entry point (supervisor.ctl.main) runs a few simple argument
shapes of status and pid without importing this module; everything else comes here.
"""

from __future__ import annotations

from typing import IO, Any

import click

from supervisor import __version__, paths
from supervisor.control.protocol import help_epilog
from supervisor.ctl import (
    client,
    events,
    logs,
    pid,
    reexec,
    reload,
    restart,
    sendsignal,
    shutdown,
    start,
    status,
    stop,
    tail_cmd,
)

# supervisord's supervisorctl verbs that pyvisor does differently: what to type instead
SUPERVISORCTL_VERBS = {
    "update": "'supervisorctl reload' here (it applies what changed in the config)",
    "reread": "'supervisorctl reload' here (it reads the config and applies what changed)",
    "add": "'supervisorctl reload' here (it starts the workers added to the config)",
    "remove": "'supervisorctl reload' here (it stops the workers removed from the config)",
    "avail": "'supervisorctl status' here (it lists every configured instance)",
    "maintail": "the daemon's stderr here (journalctl -u supervisord under systemd)",
    "fg": "'supervisorctl tail -f TARGET' here",
    "clear": "not needed here: logs rotate by size (stdout.max_bytes)",
    "version": "'supervisorctl --version' here",
}


class _Group(click.Group):
    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name in SUPERVISORCTL_VERBS and self.get_command(ctx, name) is None:
            raise click.UsageError(
                f"No such command {name!r}; supervisord's {name} is "
                f"{SUPERVISORCTL_VERBS[name]}.",
                ctx,
            )
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except client.CtlError as e:    # click-free, so that the fast path needs no click
            raise _Shown(e) from None


class _Shown(click.ClickException):
    """A CtlError as click reports it: its message as is on stderr, its exit code."""

    def __init__(self, error: client.CtlError) -> None:
        super().__init__(error.message)
        self.error = error
        self.exit_code = error.exit_code  # type: ignore[misc]  # per-instance code by design

    def show(self, file: IO[Any] | None = None) -> None:
        self.error.show()


@click.group(
    cls=_Group,
    epilog=help_epilog(),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "-c",
    "--config",
    metavar="FILE",
    envvar=paths.ENV_CONFIG,
    help=f"The config file supervisord runs (default: ${paths.ENV_CONFIG}, "
    f"else ./{client.DEFAULT_CONFIG}).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Give up waiting for supervisord's answer after SECONDS (exit 6). "
    "Default: wait as long as the operation takes.",
)
@click.version_option(__version__, prog_name="supervisorctl")
@click.pass_context
def cli(ctx: click.Context, config: str | None, timeout: float | None) -> None:
    """Control the supervisord that runs FILE.

    \b
    Targets: NAME (every instance of a worker), NAME:INDEX (one instance), all.
    Shell completion (bash; zsh and fish likewise with zsh_source / fish_source):
      eval "$(_SUPERVISORCTL_COMPLETE=bash_source supervisorctl)"
    """
    ctx.obj = client.Session(config=config, timeout=timeout)


for _verb in (status, start, stop, restart, sendsignal, tail_cmd, logs, reload, shutdown, pid,
              reexec, events):
    cli.add_command(_verb.cmd)


def main() -> None:
    """The click CLI alone (supervisor.ctl.main.main is the entry point)."""
    cli(prog_name="supervisorctl")


if __name__ == "__main__":
    main()
