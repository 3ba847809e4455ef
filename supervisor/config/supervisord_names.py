"""supervisord's option names and what pyvisor calls them: the one table that both the config
loader (an unknown key that is a supervisord option gets the pyvisor key as its suggestion,
not the nearest spelling: ``stopwaitsecs`` is kill_timeout, not start_seconds) and the
converter (supervisor/convert/programs.py) use.

A value is either a key of the same section (``kill_timeout``), a key with its value
(``stderr: stdout``), a dotted key below it (``stdout.max_bytes``), or, for an option pyvisor
has no key for, what to do instead (it then starts with "no key:").
"""

from __future__ import annotations

from supervisor.config.yamlfile import Path

# [program:x] options -> keys of workers.NAME
PROGRAM: dict[str, str] = {
    "autorestart": "restart",
    "startsecs": "start_seconds",
    "startretries": "start_retries",
    "exitcodes": "exit_codes",
    "stopsignal": "stop_signal",
    "stopwaitsecs": "kill_timeout",
    "redirect_stderr": "stderr: stdout",
    "stdout_logfile": "stdout.path",
    "stdout_logfile_maxbytes": "stdout.max_bytes",
    "stdout_logfile_backups": "stdout.backups",
    "stderr_logfile": "stderr.path",
    "stderr_logfile_maxbytes": "stderr.max_bytes",
    "stderr_logfile_backups": "stderr.backups",
    "stopasgroup": "no key: pyvisor always signals the whole process group; remove it",
    "killasgroup": "no key: pyvisor always signals the whole process group; remove it",
    "process_name": "no key: instances are named NAME:0, NAME:1, ...; remove it",
    "numprocs_start": "no key: instances are numbered from 0 ({index}); remove it",
}
# [supervisord] options -> keys of supervisor:
SUPERVISORD: dict[str, str] = {
    "childlogdir": "log_dir",
    "loglevel": "log_level",
    "nodaemon": "no key: pyvisor always runs in the foreground; remove it",
    "logfile": "no key: the daemon logs to its stderr (the journal, under systemd); remove it",
    "pidfile": "no key: supervisorctl -c FILE finds the daemon; remove it",
}
# top-level sections of a supervisord.conf written as YAML keys
TOP: dict[str, str] = {
    "programs": "workers",
    "program": "workers",
    "supervisord": "supervisor",
}


def hint(path: Path) -> str | None:
    """The message for an unknown key at ``path`` that is a supervisord option, else None."""
    key = str(path[-1]).lower()
    if len(path) == 3 and path[0] == "workers":
        table = PROGRAM
    elif len(path) == 2 and path[0] == "supervisor":
        table = SUPERVISORD
    elif len(path) == 1:
        table = TOP
    else:
        return None
    meant = table.get(key)
    if meant is None:
        return None
    if table is TOP:
        return f"unknown key; did you mean {meant!r}?"
    if meant.startswith("no key: "):
        return f"unknown key (supervisord's {key}); {meant.removeprefix('no key: ')}"
    return f"unknown key; did you mean {meant!r}? (supervisord's {key})"
