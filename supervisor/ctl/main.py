"""supervisorctl's entry point: the common read-only commands without importing click.

click (and with it inspect, typing machinery, ...) costs ~60 ms to import, more than the rest
of a ``supervisorctl status`` at 1,000 workers. So ``main`` first tries to recognise the
argument list as one of a few simple shapes, exactly as the click CLI (supervisor.ctl.cli)
would parse them:

    [-c FILE | --config FILE | --config=FILE] status [--json] [-v | --verbose] [TARGET...]
    [-c FILE | --config FILE | --config=FILE] pid [TARGET...]
    [-c FILE | --config FILE | --config=FILE] tail TARGET [--stdout | --stderr]
                                                  [-n N | --lines N | --lines=N]

(options of the verb anywhere after it, tail's at most once each; each TARGET matching the
TARGET pattern; N plain digits; FILE not empty and not starting with '-'; without -c,
$PYVISOR_CONFIG if set and not empty, as click's envvar). Those run the same functions
click's commands call (supervisor.ctl.readonly, supervisor.ctl.tail) and report failures as
click would (supervisor.ctl.out). Anything else -- another verb or option, --timeout, tail -f,
--help, a bad TARGET, '--', a repeated -c, shell completion -- goes to the click CLI
unchanged, which owns every usage error and every help text. tests/e2e/test_ctl_fastpath.py
runs a set of argument lists through both and compares stdout, stderr and the exit code.
"""

from __future__ import annotations

import errno
import os
import sys

from supervisor import paths
from supervisor.ctl import client, readonly
from supervisor.ctl.out import echo, pacify_streams

TYPE_CHECKING = False
if TYPE_CHECKING:   # typing and collections.abc stay out of the start-up (a plain Plan too)
    from collections.abc import Mapping, Sequence

PROG_NAME = "supervisorctl"
COMPLETE_VAR = "_SUPERVISORCTL_COMPLETE"     # click's shell completion variable for PROG_NAME
# the verbs of the fast path and the flags each takes (as their click commands define them)
FLAGS: dict[str, frozenset[str]] = {
    "status": frozenset({"--json", "-v", "--verbose"}),
    "pid": frozenset(),
    "tail": frozenset({"--stdout", "--stderr"}),
}
TAIL_LINES = 10             # the -n default of tail and logs (their click option takes it)
_MAX_DIGITS = 18            # a longer -n goes to click (int() limits, click's message)


class Plan:
    """What to run: the config, the verb, its flags and targets, tail's -n."""

    __slots__ = ("config", "verb", "flags", "targets", "lines")

    def __init__(self, config: str | None, verb: str, flags: frozenset[str],
                 targets: tuple[str, ...], lines: int = TAIL_LINES) -> None:
        self.config, self.verb, self.flags = config, verb, flags
        self.targets, self.lines = targets, lines

    def _key(self) -> tuple[object, ...]:
        return self.config, self.verb, self.flags, self.targets, self.lines

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, Plan) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Plan{self._key()!r}"


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
    lines = TAIL_LINES
    if verb == "tail":
        found = _tail_lines(args)
        if found is None:
            return None
        lines, args = found
    flags = {a for a in args if a.startswith("-")}
    if not flags <= FLAGS[verb]:
        return None
    targets = tuple(a for a in args if not a.startswith("-"))
    if not all(readonly.is_target(t) for t in targets):
        return None
    if verb == "tail" and (len(targets) != 1 or sum(a.startswith("-") for a in args) > 1):
        return None     # one TARGET; one --stdout or --stderr at most
    if config is None:
        config = environ.get(paths.ENV_CONFIG) or None
    return Plan(config, verb, frozenset(flags), targets, lines)


def _tail_lines(args: list[str]) -> tuple[int, list[str]] | None:
    """tail's one -n N / --lines N / --lines=N (plain decimal digits) and the other args."""
    lines: int | None = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        value: str | None = None
        if a in ("-n", "--lines"):
            if i + 1 >= len(args):
                return None
            value, i = args[i + 1], i + 2
        elif a.startswith("--lines="):
            value, i = a.partition("=")[2], i + 1
        else:
            rest.append(a)
            i += 1
            continue
        if lines is not None or not value.isascii() or not value.isdigit() \
                or len(value) > _MAX_DIGITS:
            return None
        lines = int(value)
    return (TAIL_LINES if lines is None else lines), rest


def run(plan: Plan) -> None:
    """Carry out a plan as the click CLI would, exit code and messages included."""
    session = client.Session(config=plan.config)
    try:
        if plan.verb == "status":
            readonly.status(session, plan.targets, "--json" in plan.flags,
                            bool(plan.flags & {"-v", "--verbose"}))
        if plan.verb == "tail":
            from supervisor.ctl import tail

            only = next((f[2:] for f in plan.flags), None)   # "--stdout" -> "stdout"
            tail.run(session, plan.targets[0], False, only, plan.lines)
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
