"""supervisorctl's entry point: the common read-only commands without importing click.

click (and with it inspect, typing machinery, ...) costs ~60 ms to import, more than the rest
of a ``supervisorctl status`` at 1,000 workers. So ``main`` first tries to recognise the
argument list as one of a few simple shapes, exactly as the click CLI (supervisor.ctl.cli)
would parse them:

    [-c FILE | --config FILE | --config=FILE] status [--json] [-v | --verbose] [TARGET...]
    [-c FILE | --config FILE | --config=FILE] pid [TARGET...]

(options of the verb anywhere after it, each TARGET matching the TARGET pattern, FILE not
empty and not starting with '-'; without -c, $PYVISOR_CONFIG if set and not empty, as click's
envvar). Those run the same functions click's commands call (supervisor.ctl.readonly) and
report failures as click would (supervisor.ctl.out). Anything else -- another verb or option,
--timeout, --help, a bad TARGET, '--', a repeated -c, shell completion -- goes to the click CLI
unchanged, which owns every usage error and every help text. tests/e2e/test_ctl_fastpath.py
runs a set of argument lists through both and compares stdout, stderr and the exit code.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from supervisor import paths
from supervisor.ctl import client, readonly
from supervisor.ctl.out import echo, pacify_streams

PROG_NAME = "supervisorctl"
COMPLETE_VAR = "_SUPERVISORCTL_COMPLETE"     # click's shell completion variable for PROG_NAME
# the verbs of the fast path and the flags each takes (as their click commands define them)
FLAGS: dict[str, frozenset[str]] = {
    "status": frozenset({"--json", "-v", "--verbose"}),
    "pid": frozenset(),
}


@dataclass(frozen=True)
class Plan:
    config: str | None
    verb: str
    flags: frozenset[str]
    targets: tuple[str, ...]


def recognise(argv: Sequence[str], environ: Mapping[str, str]) -> Plan | None:
    """The plan for argv if it is one of the simple shapes, else None (the click CLI decides)."""
    if COMPLETE_VAR in environ:
        return None
    rest = list(argv)
    config: str | None = None
    if rest and rest[0] in ("-c", "--config"):
        if len(rest) < 2:
            return None
        config = rest[1]
        del rest[:2]
    elif rest and rest[0].startswith("--config="):
        config = rest[0].partition("=")[2]
        del rest[:1]
    if config is not None and (not config or config.startswith("-")):
        return None
    if not rest or rest[0] not in FLAGS:
        return None
    verb, args = rest[0], rest[1:]
    flags = {a for a in args if a.startswith("-")}
    if not flags <= FLAGS[verb]:
        return None
    targets = tuple(a for a in args if not a.startswith("-"))
    if not all(readonly.is_target(t) for t in targets):
        return None
    if config is None:
        config = environ.get(paths.ENV_CONFIG) or None
    return Plan(config, verb, frozenset(flags), targets)


def run(plan: Plan) -> None:
    """Carry out a plan as the click CLI would, exit code and messages included."""
    session = client.Session(config=plan.config)
    try:
        if plan.verb == "status":
            readonly.status(session, plan.targets, "--json" in plan.flags,
                            bool(plan.flags & {"-v", "--verbose"}))
        readonly.pid(session, plan.targets)
    except client.CtlError as e:
        e.show()
        sys.exit(e.exit_code)
    except (EOFError, KeyboardInterrupt):
        echo("", err=True)          # click: a blank line to close the terminal's ^C, then
        echo("Aborted!", err=True)
        sys.exit(1)
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
        pacify_streams()            # stdout's reader has gone (| head): exit 1, quietly
        sys.exit(1)


def main() -> None:
    plan = recognise(sys.argv[1:], os.environ)
    if plan is None:
        from supervisor.ctl import cli

        cli.main()
        return
    run(plan)


if __name__ == "__main__":
    main()
