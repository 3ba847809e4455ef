"""The sections that are not programs: [supervisord] (a few settings carry over to
``supervisor:``, the rest get a note each), the control servers, groups, and what pyvisor does
not have (eventlisteners, FastCGI programs, XML-RPC). Each note says what pyvisor does instead.
"""

from __future__ import annotations

from typing import Any

from supervisor.convert.context import Context, Reader
from supervisor.convert.values import boolean, environment, log_level

_DAEMON_LOG = "pyvisor logs to its stderr (the journal, under systemd)"
SUPERVISORD = {
    "logfile": _DAEMON_LOG,
    "logfile_maxbytes": _DAEMON_LOG,
    "logfile_backups": _DAEMON_LOG,
    "pidfile": "pyvisor writes no pid file; supervisorctl -c FILE.yaml finds the daemon",
    "user": "run supervisord as this user instead (User= in its systemd unit); a worker's "
            "user: still works",
    "umask": "the daemon's own umask: set UMask= in its systemd unit (a program's umask= "
             "becomes its worker's umask:)",
    "directory": "pyvisor does not change directory; a worker without directory: runs in the "
                 "YAML file's directory",
    "minfds": "set LimitNOFILE= in the systemd unit (or ulimit -n)",
    "minprocs": "set LimitNPROC= in the systemd unit (or ulimit -u)",
    "identifier": "pyvisor has no identifier; each config file has its own socket",
    "nocleanup": "pyvisor never removes old worker log files at start",
    "strip_ansi": "pyvisor writes worker output as it comes",
    "silent": "pyvisor always logs to its stderr",
}
UNIX_HTTP_SERVER = {
    "file": "pyvisor puts its socket under /run/pyvisor (root) or $XDG_RUNTIME_DIR and "
            "supervisorctl -c FILE.yaml finds it; set supervisor.socket to choose the path",
    "chmod": "pyvisor's socket is 0600 (owner only), or 0660 with supervisor.socket_group",
    "chown": "pyvisor's socket belongs to the daemon's user; set supervisor.socket_group "
             "(with socket_mode '0660') to let a group connect",
    "username": "pyvisor has no passwords: the socket's owner, group and mode decide who may "
                "connect",
    "password": "pyvisor has no passwords: the socket's owner, group and mode decide who may "
                "connect",
}
# Sections pyvisor has nothing for, by prefix: what it does instead.
WHOLE_SECTIONS = {
    "inet_http_server": "TCP control is not supported; pyvisor is controlled over its Unix "
                        "socket only (supervisorctl on the host, or over ssh)",
    "supervisorctl": "supervisorctl -c FILE.yaml finds the daemon's socket itself; nothing to "
                     "set",
    "rpcinterface:": "pyvisor has no XML-RPC interface; supervisorctl speaks its own protocol "
                     "over the Unix socket",
    "ctlplugin:": "supervisorctl plugins are not supported",
    "eventlistener:": "eventlisteners are not supported (pyvisor has no events); left out",
    "fcgi-program:": "FastCGI programs are not supported (pyvisor opens no sockets for its "
                     "workers); left out: run it as a [program:x] that opens its own socket",
}


def supervisord(ctx: Context) -> dict[str, Any]:
    """The [supervisord] section -> the ``supervisor:`` settings. Also sets ctx.global_env."""
    if "supervisord" not in ctx.conf.sections:
        return {}
    r = Reader(ctx, "supervisord")
    names = ctx.names() | {"host_node_name": ctx.hostname}
    text = r.text("environment", names)
    if text is not None:
        ctx.global_env = r.check("environment", text, environment)
        r.note("environment", "carried into every worker's environment (pyvisor has no "
               "daemon-wide one); a worker's own environment wins")
    out: dict[str, Any] = {}
    log_dir = r.text("childlogdir", names)
    if log_dir is not None:
        out["log_dir"] = log_dir
    level = r.text("loglevel", names)
    if level is not None:
        out["log_level"] = r.check("loglevel", level, log_level)
        if level.strip().lower() == "blather":
            r.note("loglevel", "blather became TRACE, pyvisor's most detailed level")
    if r.raw("nodaemon") is not None and not r.parse("nodaemon", names, boolean, False):
        r.note("nodaemon", "not carried over: pyvisor always runs in the foreground (under "
               "systemd, or with nohup ... &)")
    for option, why in SUPERVISORD.items():
        if r.text(option, names, carried=False) is not None:
            r.note(option, f"not carried over: {why}")
    r.unknown({"environment", "childlogdir", "loglevel", "nodaemon", *SUPERVISORD})
    return out


def groups(ctx: Context) -> None:
    """[group:x] sections: notes, and ctx.group_of for %(group_name)s."""
    programs = {s.split(":", 1)[1].strip() for s in ctx.conf.sections if s.startswith("program:")}
    for section in ctx.conf.sections:
        if not section.startswith("group:"):
            continue
        r = Reader(ctx, section)
        group = section.split(":", 1)[1].strip()
        listed = r.text("programs", ctx.names(), carried=False) or ""
        members = [p.strip() for p in listed.split(",") if p.strip()]
        for member in members:
            if member not in programs:
                raise r.fail("programs", f"names {member!r}, which is not a [program:x] "
                             "(supervisord refuses this too)")
            ctx.group_of[member] = group
        if members:
            r.note("programs", "not carried over: pyvisor has no groups; workers are named on "
                   f"their own (supervisorctl start {' '.join(members)})")
        if r.text("priority", ctx.names(), carried=False) is not None:
            r.note("priority", "not carried over: pyvisor starts workers by their own "
                   "priority (set it on each)")
        r.unknown({"programs", "priority"})


def other(ctx: Context, section: str) -> None:
    """Any section that is neither a program, a group, [supervisord] nor [include]."""
    r = Reader(ctx, section)
    if section == "unix_http_server":
        for option, why in UNIX_HTTP_SERVER.items():
            if r.raw(option) is not None:
                r.note(option, f"not carried over: {why}")
        r.unknown(set(UNIX_HTTP_SERVER))
        return
    if section == "include":
        r.unknown({"files"})
        return
    for prefix, why in WHOLE_SECTIONS.items():
        if section == prefix or (prefix.endswith(":") and section.startswith(prefix)):
            r.note(None, f"not carried over: {why}")
            return
    r.note(None, "not carried over: unknown section (supervisord ignores it too)")
