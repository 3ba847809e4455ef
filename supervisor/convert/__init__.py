"""Migration from supervisord: a supervisord.conf (and its includes) -> a pyvisor YAML config.

``convert(path)`` returns (the YAML text, the notes): one line per option that could not be
carried over, or was changed on the way, and why (``FILE: [program:x] option: why``). A file
supervisord would refuse raises ConvertError, whose lines name the file, line and fault.
``supervisord --convert FILE.conf`` prints the YAML on stdout and the notes on stderr (cli.py).

The modules, each depending only on the ones before it:

- values.py: supervisord's value rules: %(name)s expansion, booleans, sizes, environments
- ini.py: the files as supervisord reads them (includes, %(here)s), with every option's line
- context.py: what the sections' conversions share, and a reader of one section's options
- logs.py: stdout_logfile / stderr_logfile -> stdout: / stderr:
- programs.py: [program:x] -> a worker
- sections.py: [supervisord], [group:x], the servers and what pyvisor has no place for
- cli.py: the --convert option of supervisord
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any

import yaml

from supervisor.convert import sections
from supervisor.convert.context import Context
from supervisor.convert.ini import ConvertError, Note, read
from supervisor.convert.programs import Program

__all__ = ["ConvertError", "convert"]

HEADER = """\
# pyvisor config converted by `supervisord --convert` from:
{files}
# What could not be carried over was listed on the conversion's stderr. Check this file with
#   supervisord -c FILE.yaml --check
# Unlike supervisord: a worker without directory: runs in this file's directory, and log files
# rotate at 10MB keeping 5 (supervisord: 50MB, 10) where max_bytes / backups are not set.
"""


def convert(path: str, *, environ: Mapping[str, str] | None = None,
            hostname: str | None = None) -> tuple[str, list[str]]:
    """(YAML text, notes) for the supervisord config at ``path``. ``environ`` (default: this
    process's) is what %(ENV_X)s expands from; ``hostname`` is %(host_node_name)s."""
    environ = os.environ if environ is None else environ
    hostname = platform.node() if hostname is None else hostname
    ctx = Context(read(path, environ, hostname), environ, hostname)
    conf = ctx.conf
    settings = sections.supervisord(ctx)
    sections.groups(ctx)
    workers: dict[str, Any] = {}
    for section in conf.sections:
        if section.startswith("program:"):
            program = Program(ctx, section)
            worker = program.convert()
            if worker is not None:
                workers[program.name] = worker
        elif section != "supervisord" and not section.startswith("group:"):
            sections.other(ctx, section)
    data: dict[str, Any] = {"supervisor": settings} if settings else {}
    data["workers"] = workers
    files = "\n".join(f"#   {f}" for f in conf.files)
    text = HEADER.format(files=files) + "\n" + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1 << 16)
    return text, [str(n) for n in _in_file_order(conf.files, conf.notes + ctx.notes)]


def _in_file_order(files: list[str], notes: list[Note]) -> list[Note]:
    order = {f: i for i, f in enumerate(files)}
    return sorted(notes, key=lambda n: (order.get(n.where.file, len(files)), n.where.line or 0))
