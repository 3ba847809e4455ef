"""``supervisord --convert FILE.conf``: the YAML on stdout, one note per line on stderr, exit 0;
a file supervisord would refuse, or --convert given with the options of a normal run: the
message on stderr, exit 2 (no traceback)."""

from __future__ import annotations

import click
from click.core import ParameterSource

from supervisor.convert import ConvertError, convert

EXIT_BAD_FILE = 2


def run(ctx: click.Context, path: str) -> int:
    """The exit code. Options given on the command line besides --convert are refused: a
    conversion runs nothing (``-c`` from $PYVISOR_CONFIG is fine)."""
    others = [max(p.opts, key=len) for p in ctx.command.params
              if p.name and p.name != "convert_path"
              and ctx.get_parameter_source(p.name) is ParameterSource.COMMANDLINE]
    if others:
        click.echo(f"supervisord: --convert runs nothing, so it takes no {', '.join(others)}; "
                   "convert first, then run: supervisord -c FILE.yaml", err=True)
        return EXIT_BAD_FILE
    try:
        text, notes = convert(path)
    except ConvertError as e:
        click.echo(str(e), err=True)
        return EXIT_BAD_FILE
    click.echo(text, nl=False)
    for note in notes:
        click.echo(note, err=True)
    return 0
