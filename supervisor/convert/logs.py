"""A program's stdout_logfile / stderr_logfile options -> pyvisor's stdout: / stderr:.

Rules:

- Unset or AUTO: pyvisor's default file ({log_dir}/NAME-INDEX.out.log, .err.log); supervisord's
  AUTO files live in childlogdir, which becomes supervisor.log_dir.
- NONE, OFF and /dev/null: ``null`` (discarded).
- The daemon's own stdout/stderr (/dev/stdout, /dev/fd/1, /proc/1/fd/1 ...): ``daemon``
  (pyvisor's daemon prints such output with the instance before each line). stdout can only go
  to the daemon's stdout and stderr to its stderr, or to wherever stdout goes (``stderr:
  stdout``); another pairing gets a note. Rotation options are dropped with a note when they
  would have rotated something (maxbytes not 0).
- syslog cannot be written: the default file is used, the size and backups given for that
  target are dropped with it, and a note says so.
- A path is a template: its braces are doubled, and %(process_num)d becomes {index} when
  numprocs > 1 (pyvisor pads no numbers, so %(process_num)02d gives worker_0.log, not
  worker_00.log; a note says so).
- pyvisor refuses two instances writing one file (its rotation would break). A path without
  {index} shared by a numprocs > 1 program gets "-{index}" before its extension; a path
  another program already writes goes back to the default file. Both get a note.
- redirect_stderr=true: stderr: stdout (one file), and stderr_logfile is ignored, as
  supervisord ignores it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from supervisor.config.models import MAX_NUMPROCS
from supervisor.convert.context import Reader
from supervisor.convert.values import Ref, byte_size, integer

TO_DAEMON = ("/dev/stdout", "/dev/stderr", "/dev/fd/1", "/dev/fd/2", "/proc/self/fd/1",
             "/proc/self/fd/2", "/proc/1/fd/1", "/proc/1/fd/2")     # stdout, stderr, ...
NOT_A_FILE = "pyvisor keeps a worker's output in a log file"
_SUPERVISORD_KEY = {"max_bytes": "maxbytes", "backups": "backups"}   # rotation key -> option
DISCARD, DAEMON_OUT, DAEMON_ERR = "/dev/null", "/dev/stdout", "/dev/stderr"   # _path's answers


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


class Logs:
    def __init__(self, r: Reader, name: str, numprocs: int, names: dict[str, object]) -> None:
        self.r = r
        self.name = name
        self.numprocs = numprocs
        self.names = names
        self.claimed: dict[str, str] = {}      # this program's files, claimed at the end

    def streams(self, redirect: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        stdout = self.stream("stdout")
        if stdout != {}:
            out["stdout"] = stdout
        if redirect:
            raw = self.r.raw("stderr_logfile")
            if raw is not None and raw.strip().lower() not in ("auto", "none", "off"):
                self.r.note("stderr_logfile", "not carried over: redirect_stderr=true sends "
                            "stderr into stdout's file (supervisord ignores it too)")
            out["stderr"] = "stdout"
        else:
            stderr = self.stream("stderr", stdout_to_daemon=stdout == "daemon")
            if stderr != {}:
                out["stderr"] = stderr
        self.r.ctx.log_owners.update(self.claimed)
        return out

    def stream(self, stream: str, stdout_to_daemon: bool = False) -> Any:
        """What goes under stdout: / stderr: ({} for the default file)."""
        option = f"{stream}_logfile"
        path, dropped = self._path(option)
        rotation = {"max_bytes": self._rotation(f"{option}_maxbytes", byte_size),
                    "backups": self._rotation(f"{option}_backups", integer)}
        rotation = {k: v for k, v in rotation.items() if v is not None}
        for key, value in rotation.items():
            if isinstance(value, int) and value < 0:     # supervisord acts as on 0
                self.r.note(f"{option}_{_SUPERVISORD_KEY[key]}", f"{value} carried over as 0 "
                            "(supervisord takes a negative value as 0; pyvisor refuses it)")
                rotation[key] = 0
        if path in (DISCARD, DAEMON_OUT, DAEMON_ERR):
            if rotation.get("max_bytes", 0) not in (0, "0"):
                self.r.note(f"{option}_maxbytes", "not carried over: output that goes to no "
                            "file is never rotated")
            if path == DISCARD:
                return None
            if stream == "stdout":
                if path == DAEMON_ERR:
                    self.r.note(option, "to the daemon's stdout: pyvisor sends a worker's "
                                "stdout to the daemon's stdout, not its stderr")
                return "daemon"
            if path == DAEMON_OUT and stdout_to_daemon:
                return "stdout"
            if path == DAEMON_OUT:
                self.r.note(option, "to the daemon's stderr: pyvisor sends a worker's stderr "
                            "to the daemon's stderr, or with stdout (stderr: stdout)")
            return "daemon"
        if dropped:
            also = [f"{option}_{k}" for k in ("maxbytes", "backups")
                    if self.r.raw(f"{option}_{k}") is not None]
            tail = f" ({' and '.join(also)} dropped with it)" if also else ""
            self.r.note(option, f"not carried over: {dropped}; it goes to the default log "
                        f"file{tail}")
            return {}
        return ({"path": path} if path else {}) | rotation

    def _rotation(self, option: str, parse: Callable[[str], int | str]) -> int | str | None:
        text = self.r.text(option, self.names)
        return None if text is None else self.r.check(option, text, parse)

    def _path(self, option: str) -> tuple[str | None, str]:
        """(the path template or None for the default file, why the target given cannot be
        carried over or "")."""
        index_refs: list[Ref] = []

        def index(ref: Ref) -> str:
            index_refs.append(ref)
            return "{index}"

        special = {"process_num": index} if self.numprocs > 1 else None
        template = self.r.text(option, self.names, literal=_escape, special=special)
        if template is None or template.strip().lower() == "auto":
            return None, ""
        target = template.strip()
        if target.lower() in ("none", "off") or os.path.normpath(target) == DISCARD:
            return DISCARD, ""
        if target.lower() == "syslog":
            return None, f"syslog: {NOT_A_FILE}, never syslog"
        if os.path.normpath(target) in TO_DAEMON:
            return (DAEMON_OUT if TO_DAEMON.index(os.path.normpath(target)) % 2 == 0
                    else DAEMON_ERR), ""
        if not os.path.isabs(target):
            self.r.note(option, "relative path: pyvisor takes it from the YAML file's "
                        "directory (supervisord took it from its working directory)")
        template = self._own_file(option, target)
        if template and any(ref.spec for ref in index_refs):
            self.r.note(option, f"{index_refs[0].text} became {{index}}, which is not "
                        f"zero-padded: the first file is {template.format(index=0)}")
        return template, ""

    def _own_file(self, option: str, template: str) -> str | None:
        if self.numprocs > 1 and "{index}" not in template.replace("{{", ""):
            stem, ext = os.path.splitext(template)
            shared, template = template, f"{stem}-{{index}}{ext}"
            self.r.note(option, f"all {self.numprocs} instances would write to {shared.format()}; "
                        f"pyvisor gives each its own file: {template}")
        # Past pyvisor's bound the file fails --check anyway (programs.py says so); the
        # bound keeps a numprocs of 10**8 from building 10**8 names.
        files = {template.format(index=i) for i in range(min(self.numprocs, MAX_NUMPROCS))}
        owner = next((self.r.ctx.log_owners[f] for f in files if f in self.r.ctx.log_owners),
                     None)
        if owner:
            self.r.note(option, f"not carried over: {owner} writes that file too, and pyvisor "
                        "gives every worker its own; this one goes to the default log file")
            return None
        for f in files:
            self.claimed.setdefault(f, f"[{self.r.section}] {option}")
        return template

