"""What every section's conversion shares: the file read, the names supervisord expands, the
notes collected, and a reader of one section's options that words its errors and notes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from supervisor.convert.ini import Conf, ConvertError, Location, Note
from supervisor.convert.values import BadValue, Special, expand

T = TypeVar("T")


@dataclass
class Context:
    conf: Conf
    environ: Mapping[str, str]      # the converter's environment, for %(ENV_X)s
    hostname: str                   # for %(host_node_name)s
    notes: list[Note] = field(default_factory=list)
    # [supervisord] environment=: every program's environment starts from it, and its
    # variables are %(ENV_X)s names too (written in the file, so expanding them needs no note)
    global_env: dict[str, str] = field(default_factory=dict)
    group_of: dict[str, str] = field(default_factory=dict)      # program -> its [group:x]
    log_owners: dict[str, str] = field(default_factory=dict)    # log file -> who writes it

    def names(self) -> dict[str, object]:
        """The names every option may use: ENV_X and here."""
        names: dict[str, object] = {f"ENV_{k}": v for k, v in self.environ.items()}
        names.update({f"ENV_{k}": v for k, v in self.global_env.items()})
        names["here"] = self.conf.directory
        return names


class Reader:
    """One section's options: raw, expanded, parsed; errors and notes name its file and line.
    ``written_env``: variables whose %(ENV_X)s values come from the file itself."""

    def __init__(self, ctx: Context, section: str) -> None:
        self.ctx = ctx
        self.section = section
        self.values = ctx.conf.sections[section]
        self.written_env: set[str] = set(ctx.global_env)

    def raw(self, option: str) -> str | None:
        return self.values.get(option)

    def where(self, option: str | None = None) -> Location:
        return self.ctx.conf.where(self.section, option)

    def fail(self, option: str | None, message: str) -> ConvertError:
        head = f"[{self.section}] {option}" if option else f"[{self.section}]"
        return ConvertError([f"{self.where(option)}: {head}: {message}"])

    def note(self, option: str | None, text: str) -> None:
        self.ctx.notes.append(Note(self.where(option), self.section, option, text))

    def text(self, option: str, names: Mapping[str, object], *,
             literal: Callable[[str], str] | None = None,
             special: Mapping[str, Special] | None = None, carried: bool = True) -> str | None:
        """The option expanded (None when it is not set), with a note for what was expanded
        from this machine rather than from the file, when the value is ``carried`` into the
        YAML (an option that is not is still expanded: supervisord would refuse a bad one)."""
        raw = self.raw(option)
        if raw is None:
            return None
        try:
            value, used = expand(raw, names, literal=literal, special=special)
        except BadValue as e:
            raise self.fail(option, str(e)) from None
        if not carried:
            return value
        from_here = sorted(n for n in used if n.startswith("ENV_")
                           and n[4:] not in self.written_env)
        if from_here:
            refs = ", ".join(f"%({n})s" for n in from_here)
            self.note(option, f"{refs} expanded from the environment of this conversion; "
                      "pyvisor does not expand variables, so the file holds today's value "
                      "(convert where it will run, or edit it)")
        here = self.ctx.conf.here.get((self.section, option))
        if here is not None:
            self.note(option, f"%(here)s expanded to {here}, the directory of the file it is in")
        return value

    def parse(self, option: str, names: Mapping[str, object], parse: Callable[[str], T],
              default: T) -> T:
        text = self.text(option, names)
        if text is None:
            return default
        return self.check(option, text, parse)

    def check(self, option: str, text: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(text)
        except BadValue as e:
            raise self.fail(option, str(e)) from None

    def unknown(self, handled: set[str]) -> None:
        for option in self.values:
            if option not in handled:
                self.note(option, "not carried over: unknown option (supervisord ignores it too)")
