"""One [program:x] section -> one pyvisor worker (a dict ready for YAML), with notes.

supervisord expands most options with the program's names (program_name, group_name,
host_node_name, here, ENV_X) and the per-process ones (process_num, numprocs) in command,
environment, directory and the log files. With numprocs = 1 they are expanded for the one
instance. With numprocs > 1, %(process_num)... becomes pyvisor's {index} in command,
environment (expanded per instance at spawn) and log paths (logs.py); a directory has no
{index}, so there it is left as written, with a note. pyvisor's own placeholders written
literally in a command or environment value are escaped ({{index}}).

Where supervisord's default differs from pyvisor's and changes what happens (startretries 3,
stopwaitsecs 10), the converted worker says supervisord's value even when the file does not.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any

from supervisor.config.models import MAX_NUMPROCS
from supervisor.config.supervisord_names import PROGRAM as SUPERVISORD_NAMES
from supervisor.config.values import MAX_COMMAND_TEXT, is_worker_name
from supervisor.convert.context import Context, Reader
from supervisor.convert.logs import Logs
from supervisor.convert.values import (
    BadValue,
    Ref,
    Special,
    auto_restart,
    boolean,
    environment,
    exit_codes,
    integer,
    signal_value,
)

DEFAULT_PROCESS_NAMES = ("%(program_name)s", "%(program_name)s_%(process_num)02d")
SHELL_OPERATORS = "|&;<>"          # pipes, lists, background, redirections
START_RETRIES = 3                  # supervisord's startretries default (pyvisor's: 5)
_AT_LEAST_0 = ("startsecs", "startretries", "stopwaitsecs")   # pyvisor refuses negatives
STOP_WAIT = 10                     # supervisord's stopwaitsecs default (pyvisor's kill_timeout: 5)
# Options pyvisor has nothing for, and why; noted when set to anything but supervisord's
# default (the value that does nothing).
UNSUPPORTED = {
    "serverurl": ("AUTO", "pyvisor has no XML-RPC server for programs to call"),
    "stdout_capture_maxbytes": ("0", "pyvisor has no capture mode or events"),
    "stderr_capture_maxbytes": ("0", "pyvisor has no capture mode or events"),
    "stdout_events_enabled": ("false", "pyvisor has no events"),
    "stderr_events_enabled": ("false", "pyvisor has no events"),
    "stdout_syslog": ("false", "pyvisor keeps a worker's output in its log file, never syslog"),
    "stderr_syslog": ("false", "pyvisor keeps a worker's output in its log file, never syslog"),
}
HANDLED = {
    "command", "process_name", "numprocs", "numprocs_start", "priority", "autostart",
    "autorestart", "startsecs", "startretries", "exitcodes", "stopsignal", "stopwaitsecs",
    "stopasgroup", "killasgroup", "user", "redirect_stderr", "environment", "directory",
    "umask",
    *(f"{s}_logfile{x}" for s in ("stdout", "stderr") for x in ("", "_maxbytes", "_backups")),
    *UNSUPPORTED,
}


_PLACEHOLDERS = re.compile(r"\{(index|name|instance)\}")


def escape_placeholders(text: str) -> str:
    """Text supervisord passed as it is, with pyvisor's {index} {name} {instance} escaped."""
    return _PLACEHOLDERS.sub(r"{{\1}}", text)


def octal_umask(text: str) -> str:
    """supervisord's umask (octal, like 022) -> the same text for pyvisor's umask:."""
    value = text.strip()
    if not re.fullmatch(r"0?o?[0-7]{1,4}", value, re.IGNORECASE) or int(
            value.lower().replace("o", "") or "0", 8) > 0o777:
        raise BadValue(f"not an octal umask (got {text!r})")
    return value


def worker_name(name: str) -> str:
    """A name pyvisor accepts: supervisord's names may hold characters pyvisor's do not."""
    if is_worker_name(name):
        return name
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in name)
    safe = safe[:64]
    return safe if is_worker_name(safe) else ("_" + safe)[:64]   # "", ".x", "-x", "all"


MAX_SPLIT = MAX_COMMAND_TEXT


def shell_operators(command: str) -> list[str]:
    """The unquoted shell operators in a command (&&, |, >, ...): supervisord split it like a
    shell and ran no shell, so they were arguments; what was meant is a shell."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=SHELL_OPERATORS)
    lexer.whitespace_split = True
    try:
        return [t for t in lexer if t and all(c in SHELL_OPERATORS for c in t)]
    except ValueError:
        return []


class Program:
    def __init__(self, ctx: Context, section: str) -> None:
        self.r = Reader(ctx, section)
        self.ctx = ctx
        self.program = section.split(":", 1)[1].strip()
        self.name = worker_name(self.program)
        group = ctx.group_of.get(self.program, self.program)
        self.names: dict[str, object] = ctx.names() | {
            "program_name": self.program, "group_name": group, "host_node_name": ctx.hostname}

    def convert(self) -> dict[str, Any] | None:
        r, names = self.r, self.names
        if self.name != self.program:
            why = ("`all` names every worker in pyvisor's commands" if self.program == "all"
                   else "pyvisor's names are 1-64 characters from A-Z a-z 0-9 _ . -")
            r.note(None, f"the worker is called {self.name}: {why}")
        numprocs = r.parse("numprocs", names, integer, 1)
        start = r.parse("numprocs_start", names, integer, 0)
        if numprocs < 1:
            r.note("numprocs", f"not carried over: numprocs={numprocs} runs nothing; the "
                   "program is left out")
            return None
        if numprocs > MAX_NUMPROCS:
            r.note("numprocs", f"{numprocs} carried over as written, but pyvisor runs at most "
                   f"{MAX_NUMPROCS} instances of a worker: --check refuses the file until it "
                   "is lowered (or the program is split into several workers)")
        self._names_and_numbers(numprocs, start)
        per_process = self.names | {"process_num": start, "numprocs": numprocs}
        env = self._environment(per_process, numprocs)
        per_process.update({f"ENV_{k}": v for k, v in env.items()})
        r.written_env.update(env)
        worker: dict[str, Any] = {"command": self._command(per_process, numprocs)}
        if numprocs != 1:
            worker["numprocs"] = numprocs
        directory = r.text("directory", per_process, special=self._keep("directory", numprocs))
        if directory is not None:
            worker["directory"] = directory
            if not os.path.isabs(directory):
                r.note("directory", "relative path: pyvisor takes it from the YAML file's "
                       "directory (supervisord took it from its working directory)")
        user = r.text("user", names)
        if user is not None:
            worker["user"] = user
        umask = r.text("umask", names)
        if umask is not None:
            worker["umask"] = r.check("umask", umask, octal_umask)
        env = self.ctx.global_env | env
        if env:
            worker["environment"] = env
        worker.update(self._policy())
        logs = Logs(r, self.name, numprocs, per_process)
        worker.update(logs.streams(r.parse("redirect_stderr", names, boolean, False)))
        for option, (default, why) in UNSUPPORTED.items():
            value = r.text(option, names, carried=False)
            if value is not None and value.strip().lower() != (default or "").lower():
                r.note(option, f"not carried over: {why}")
        r.unknown(HANDLED)
        return worker

    def _names_and_numbers(self, numprocs: int, start: int) -> None:
        r = self.r
        process_name = r.raw("process_name")
        if process_name is not None and process_name.strip() not in DEFAULT_PROCESS_NAMES:
            last = f" .. {self.name}:{numprocs - 1}" if numprocs > 1 else ""
            r.note("process_name", f"not carried over: pyvisor names the instances "
                   f"{self.name}:0{last}")
        if start != 0:
            r.note("numprocs_start", f"not carried over: pyvisor numbers instances from 0; "
                   f"%(process_num)d counted from {start} ({{index}} is 0 where it was "
                   f"{start}: add {start} where it makes a port or a name)")

    def _keep(self, option: str, numprocs: int) -> dict[str, Special] | None:
        """For numprocs > 1 in an option without {index} (directory): leave
        %(process_num)... as written, and say why once."""
        if numprocs == 1:
            return None
        said: list[str] = []

        def keep(ref: Ref) -> str:
            if not said:
                said.append(ref.text)
                self.r.note(option, f"{ref.text} left as written: pyvisor has no {{index}} in "
                            f"{option}, so all {numprocs} instances get the same text")
            return ref.text
        return {"process_num": keep}

    def _index(self, option: str, numprocs: int) -> dict[str, Special] | None:
        """For numprocs > 1: %(process_num)... becomes {index} (a note if it was padded)."""
        if numprocs == 1:
            return None
        said: list[str] = []

        def index(ref: Ref) -> str:
            if ref.spec and not said:
                said.append(ref.text)
                self.r.note(option, f"{ref.text} became {{index}}, which is not zero-padded "
                            "(0, 1, ... 10)")
            return "{index}"
        return {"process_num": index}

    def _environment(self, names: dict[str, object], numprocs: int) -> dict[str, str]:
        text = self.r.text("environment", names, literal=escape_placeholders,
                           special=self._index("environment", numprocs))
        if text is None:
            return {}
        return self.r.check("environment", text, environment)

    def _command(self, names: dict[str, object], numprocs: int) -> str | list[str]:
        r = self.r
        command = r.text("command", names, literal=escape_placeholders,
                         special=self._index("command", numprocs))
        if command is None:
            raise r.fail(None, "no command= (supervisord refuses this too)")
        if len(command) > MAX_SPLIT:         # shlex takes quadratic time (1 MB: 47 s)
            raise r.fail("command", f"{len(command):,} characters, more than pyvisor splits "
                         f"({MAX_SPLIT:,}); write it in the YAML as a list")
        try:
            split = shlex.split(command)
            if shlex.split(command.replace("\n", " ")) == split:
                command = " ".join(command.split("\n")).strip()   # continuation lines
        except ValueError as e:
            raise r.fail("command", f"cannot split it: {str(e).lower()} (got "
                         f"{command!r})") from None
        if not split:
            raise r.fail("command", "empty (supervisord refuses this too)")
        operators = shell_operators(command)
        if operators:
            shown = ", ".join(dict.fromkeys(operators))
            r.note("command", f"uses shell syntax ({shown}) but no shell runs it (supervisord "
                   "passed those to the program as arguments); wrapped as [sh, -c, ...]")
            return ["sh", "-c", command]
        return command

    def _policy(self) -> dict[str, Any]:
        r, names = self.r, self.names
        out: dict[str, Any] = {}
        for option, parse in (("autostart", boolean), ("autorestart", auto_restart),
                              ("exitcodes", exit_codes), ("startsecs", integer),
                              ("startretries", integer), ("stopsignal", signal_value),
                              ("stopwaitsecs", integer), ("priority", integer)):
            key = SUPERVISORD_NAMES.get(option, option)      # the loader's hints say the same
            text = r.text(option, names)
            if text is not None:
                out[key] = r.check(option, text, parse)
                if option in _AT_LEAST_0 and out[key] < 0:   # supervisord acts as on 0
                    r.note(option, f"{out[key]} carried over as 0 (supervisord takes a "
                           "negative value as 0; pyvisor refuses it)")
                    out[key] = 0
        out.setdefault("start_retries", START_RETRIES)
        out.setdefault("kill_timeout", STOP_WAIT)
        order = ("autostart", "restart", "exit_codes", "start_seconds", "start_retries",
                 "stop_signal", "kill_timeout", "priority")
        out = {k: out[k] for k in order if k in out}
        stop_group = r.parse("stopasgroup", names, boolean, False)
        kill_group = r.parse("killasgroup", names, boolean, stop_group)
        if stop_group and not kill_group:
            raise r.fail("killasgroup", "false with stopasgroup=true (supervisord refuses "
                         "this too)")
        if not stop_group:
            written = "" if r.raw("stopasgroup") is not None else " (supervisord's default)"
            kill = " and SIGKILL" if not kill_group else ""
            r.note("stopasgroup", f"false{written}: pyvisor sends stop_signal{kill} to the "
                   "program's whole process group, not only to its main process")
        return out
