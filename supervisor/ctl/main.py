"""supervisorctl: the command-line client of supervisord (entry point ``main``).

Each verb lives in its own module and sends one request; supervisord does the work and renders
the text, which is printed verbatim, and decides the exit code (defined in
supervisor.control.protocol).
"""

from __future__ import annotations

import click

from supervisor import __version__, paths
from supervisor.control.protocol import help_epilog
from supervisor.ctl import (
    client,
    events,
    pid,
    reexec,
    reload,
    restart,
    sendsignal,
    shutdown,
    start,
    status,
    stop,
    tail,
)


@click.group(
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


for _verb in (status, start, stop, restart, sendsignal, tail, reload, shutdown, pid, reexec,
              events):
    cli.add_command(_verb.cmd)


def main() -> None:
    cli(prog_name="supervisorctl")


if __name__ == "__main__":
    main()
