"""Checks that look at a whole validated config at once: the control socket's mode and group,
depends_on (unknown workers, cycles), the number of instances, and log files that two
instances would share (or that are the config file). Each
returns ``(path, message)`` problems; load.load_config turns them into ConfigError lines.

The dependency goes one way: these checks read the models, and loading calls the checks (the
models know nothing of them).
"""

from __future__ import annotations

import grp
import importlib.util
import os
import pwd
import re
import shutil
import stat
from dataclasses import dataclass

from supervisor import safefs
from supervisor.config.errors import MAX_SHOWN, unknown
from supervisor.config.models import MAX_INSTANCES, Config, WorkerConfig
from supervisor.config.yamlfile import Path
from supervisor.http.token import TokenError, read_token
from supervisor.paths import worker_search_path

Problem = tuple[Path, str]


def cross_checks(config: Config) -> list[Problem]:
    out: list[Problem] = []
    sup = config.supervisor
    if sup.socket_mode == 0o660 and sup.socket_group is None:
        out.append((("supervisor", "socket_mode"), ("'0660' needs socket_group (the group "
                    "allowed to connect)")))
    if sup.socket_mode == 0o600 and sup.socket_group is not None:
        out.append((("supervisor", "socket_group"), ("has no effect with socket_mode '0600'; "
                    "use socket_mode: '0660'")))
    names = list(config.workers)
    for name, worker in config.workers.items():
        for i, dep in enumerate(worker.depends_on):
            if dep not in config.workers:
                out.append((("workers", name, "depends_on", i),
                            unknown("worker", dep, names, hints=len(out) < MAX_SHOWN)))
    out += _cycles(config)
    out += _instances(config)
    out += _log_collisions(config)
    out += _http(config)
    out += _socket_dir(config)
    out += _log_dirs(config)
    out += _exec_sizes(config)
    return out


# exec's limits (linux/binfmts.h): one string (with its NUL) at most MAX_ARG_STRLEN bytes, and
# all of them with their pointers within ARG_MAX (a quarter of the stack limit, as
# sysconf tells). Past either the spawn fails with E2BIG, which names no field.
MAX_ARG_STRLEN = 32 * 4096
POINTER = 8


def _exec_sizes(config: Config) -> list[Problem]:
    out: list[Problem] = []
    limit = os.sysconf("SC_ARG_MAX")
    for name, w in config.workers.items():
        last = w.numprocs - 1            # the longest {index}
        argv, env = w.argv(name, last), w.env(name, last)
        total = 0
        for i, arg in enumerate(argv):
            size = len(os.fsencode(arg)) + 1
            total += size + POINTER
            if size > MAX_ARG_STRLEN:
                out.append((("workers", name, "command", i), (
                    f"is {size - 1:,} bytes long; exec refuses an argument of more than "
                    f"{MAX_ARG_STRLEN - 1:,}")))
        for key, value in env.items():
            size = len(os.fsencode(f"{key}={value}")) + 1
            total += size + POINTER
            if size > MAX_ARG_STRLEN:
                out.append((("workers", name, "environment", key), (
                    f"{key}=VALUE is {size - 1:,} bytes long; exec refuses a variable of "
                    f"more than {MAX_ARG_STRLEN - 1:,}")))
        if total > limit:
            out.append((("workers", name, "environment"), (
                f"the command and environment take {total:,} bytes, and exec takes at most "
                f"{limit:,} (ARG_MAX) with the daemon's own environment too; pass large data "
                "in a file")))
    return out


def _log_dirs(config: Config) -> list[Problem]:
    """The directories of the log files (made at spawn when missing) must be makeable: not
    under a file, no name over 255 bytes. Looked at for each worker's first instance."""
    log_dir = config.supervisor.log_dir
    why = _unmakeable(log_dir)
    out: list[Problem] = [(("supervisor", "log_dir"), why)] if why else []
    seen = {log_dir}
    for name, worker in config.workers.items():
        for stream, path in zip(("stdout", "stderr"), worker.log_paths(name, 0), strict=True):
            where = os.path.dirname(path) if path else log_dir
            if where not in seen and (why := _unmakeable(where)):
                out.append((("workers", name, stream, "path"), why))
            seen.add(where)
    return out


def _unmakeable(directory: str) -> str | None:
    if any(len(os.fsencode(part)) > 255 for part in directory.split("/")):
        return f"a name in {directory} is longer than 255 bytes, the limit of a file name"
    there = directory
    while not os.path.lexists(there) and there != os.path.dirname(there):
        there = os.path.dirname(there)
    if not os.path.isdir(there):
        what = "" if there == directory else f"{directory} cannot be made: "
        return f"{what}{there} is not a directory"
    return None


def _socket_dir(config: Config) -> list[Problem]:
    """The daemon refuses at start a socket whose directory others can write (/tmp): --check
    says so too. A directory still to be made is made by the daemon, and is its own; one this
    user may not open (supervisorctl of a socket_group member) is the daemon's to judge. The
    same for an http Unix socket: in /tmp another user could bind the name first (and be sent
    the bearer tokens of POSTs) or swap it for a link before the daemon's chmod."""
    sup = config.supervisor
    out = _trusted_dir(sup.socket, "socket", "the control socket")
    if sup.http is not None and sup.http.startswith("/"):
        out += _trusted_dir(sup.http, "http", "the http socket")
    return out


def _trusted_dir(path: str, field: str, what: str) -> list[Problem]:
    where = os.path.dirname(path)
    try:
        os.close(safefs.trusted_dir(where, what=what))
    except (FileNotFoundError, PermissionError):
        return []
    except safefs.UnsafePathError as e:
        return [(("supervisor", field), str(e))]
    except OSError as e:
        return [(("supervisor", field), f"cannot open its directory {where}: {e.strerror}")]
    return []


def _http(config: Config) -> list[Problem]:
    sup = config.supervisor
    out: list[Problem] = []
    names = list(config.workers)
    if sup.http is not None and importlib.util.find_spec("h11") is None:
        out.append((("supervisor", "http"), "needs the h11 package, which is not installed: "
                    "pip install 'pyvisor[http]' (into supervisord's venv)"))
    for i, name in enumerate(sup.http_ready or ()):
        if name not in config.workers:
            out.append((("supervisor", "http_ready", i),
                        unknown("worker", name, names, hints=i < MAX_SHOWN)))
    if sup.http_token_file is not None:
        if sup.http is None:
            out.append((("supervisor", "http_token_file"), "has no effect without http; set "
                        "http: '127.0.0.1:PORT' too, or remove it"))
        try:
            read_token(sup.http_token_file)
        except TokenError as e:
            out.append((("supervisor", "http_token_file"), str(e)))
    return out


def _cycles(config: Config) -> list[Problem]:
    """The dependency cycles, at most MAX_SHOWN of them (the ConfigError shows no more): a walk
    with a stack of its own, each worker left once. Recursive, with a copy of the path per
    step, a chain of 3,000 workers (a valid config) ended in RecursionError, and 700 workers
    that depend on each other (2.9 MB) made 244,550 cycles of up to 700 names: 22 s, 4.8 GB."""
    workers = config.workers
    out: list[Problem] = []
    seen: set[frozenset[str]] = set()
    where: dict[str, int] = {}           # on the path: its place in it
    done: set[str] = set()
    for root in workers:
        if root in done:
            continue
        path, deps = [root], [iter(workers[root].depends_on)]
        where[root] = 0
        while deps:
            dep = next(deps[-1], None)
            if dep is None:
                deps.pop()
                done.add(path[-1])
                del where[path.pop()]
                continue
            if dep in done or dep not in workers:
                continue
            at = where.get(dep)
            if at is None:
                where[dep] = len(path)
                path.append(dep)
                deps.append(iter(workers[dep].depends_on))
            elif len(out) < MAX_SHOWN and frozenset(cycle := path[at:]) not in seen:
                seen.add(frozenset(cycle))
                first = cycle.index(min(cycle))
                cycle = cycle[first:] + cycle[:first]
                out.append((("workers", cycle[0], "depends_on"),
                            "dependency cycle: " + " -> ".join([*cycle, cycle[0]])))
    return out


def _instances(config: Config) -> list[Problem]:
    total = sum(w.numprocs for w in config.workers.values())
    if total > MAX_INSTANCES:
        return [(("workers",), f"{total:,} instances in all; the limit is {MAX_INSTANCES:,}")]
    return []


# Log collisions without enumerating every instance. A path template with {name} filled in
# stands for one path per index; writing the index as _MARK gives the template's "shape": the
# path with every run of digits or _MARK collapsed to one _MARK. Two equal paths have equal
# shapes (an index is a run of digits), so only templates of one shape can collide, and those
# are expanded. One template with an index never collides with itself; one without an index
# gives the same path for every instance, so two instances show that. A config has one shape
# per worker as a rule: numprocs 10,000 costs nothing.
_MARK = "\0"                   # no path holds a NUL (the loader refuses them)
_RUNS = re.compile(r"[0-9\0]+")


@dataclass(frozen=True)
class _Stream:
    order: int                  # position of the worker in the file
    stream: int                 # 0 stdout, 1 stderr
    name: str
    worker: WorkerConfig
    pattern: str                # the path with the index written as _MARK


def _streams(config: Config) -> list[_Stream]:
    out: list[_Stream] = []
    for order, (name, worker) in enumerate(config.workers.items()):
        # the paths with the index as _MARK; None: no file (discarded, or to the daemon)
        out_pattern, err_pattern = worker.log_paths(name, _MARK)   # type: ignore[arg-type]
        out += [_Stream(order, stream, name, worker, pattern)
                for stream, pattern in enumerate((out_pattern, err_pattern))
                if pattern is not None]
    return out


def _log_collisions(config: Config) -> list[Problem]:
    """Two instances appending to one file would break its rotation (and be unreadable); and
    a log file must not be the config file."""
    shapes: dict[str, list[_Stream]] = {}
    for s in _streams(config):
        shapes.setdefault(_RUNS.sub(_MARK, s.pattern), []).append(s)
    found: list[tuple[tuple[int, int, int], Problem]] = []
    for members in shapes.values():
        if len({(m.order, m.pattern) for m in members}) > 1 or _MARK not in members[0].pattern:
            found += _collisions(members)
    found.sort(key=lambda item: item[0])
    out = [problem for _, problem in found]
    for s in shapes.get(_RUNS.sub(_MARK, config.path), []):
        if _matches(s, config.path):
            out.append((("workers", s.name, ("stdout", "stderr")[s.stream], "path"),
                        f"would write to the config file itself: {config.path}"))
    return out


def _collisions(members: list[_Stream]) -> list[tuple[tuple[int, int, int], Problem]]:
    """The first-claim rule over every instance of these streams, in file order (worker, index,
    stdout before stderr). A template without an index needs two instances to show that all
    of them share its file."""
    claims = sorted((m.order, index, m.stream, m) for m in members
                    for index in range(m.worker.numprocs if _MARK in m.pattern
                                       else min(m.worker.numprocs, 2)))
    out: list[tuple[tuple[int, int, int], Problem]] = []
    owner: dict[str, str] = {}
    reported: set[Path] = set()
    for order, index, stream, m in claims:
        name, worker = m.name, m.worker
        instance = f"{name}:{index}"
        label = ("stdout", "stderr")[stream]
        path = m.pattern.replace(_MARK, str(index))
        first = owner.setdefault(path, f"{instance} {label}")
        where: Path = ("workers", name, label, "path")
        if first.startswith(instance + " ") or where in reported:
            continue
        if first.startswith(name + ":"):
            msg = (f"all {worker.numprocs} instances would write to {path}; put "
                   "{index} or {instance} in the path")
        else:
            msg = f"{instance} {label} would write to the same file as {first}: {path}"
        reported.add(where)
        out.append(((order, index, stream), (where, msg)))
    return out


def _matches(s: _Stream, path: str) -> bool:
    """Whether some instance of the stream writes to ``path``."""
    head, *rest = s.pattern.split(_MARK)
    if not rest:
        return head == path
    regex = re.escape(head) + "".join(
        ("(0|[1-9][0-9]*)" if i == 0 else r"\1") + re.escape(part) for i, part in enumerate(rest))
    m = re.fullmatch(regex, path)
    return m is not None and int(m.group(1)) < s.worker.numprocs


def program_warnings(config: Config) -> list[str]:
    """Commands whose program is not found where the worker will look (its directory for a
    path with a slash, else its PATH: the one in its environment, or the daemon's with the
    daemon's interpreter directory first, as spawn sets it). Warnings, not errors: the
    program may be installed before the worker starts, or be on another PATH at run time."""
    default_path = worker_search_path(os.environ.get("PATH"))
    out = []
    found: dict[tuple[str, str], str | None] = {}     # 10,000 workers share a few programs
    denied: dict[tuple[str, str, str | None], str | None] = {}
    for name, worker in config.workers.items():
        program = worker.argv(name, 0)[0]
        search = worker.env(name, 0).get("PATH", default_path)
        where = f"{config.path}: workers.{name}.command: warning: {program!r}"
        if "/" in program:
            path = os.path.normpath(os.path.join(worker.directory, program))
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                what = "no such file" if not os.path.exists(path) else "not an executable file"
                out.append(f"{where}: {what} ({path})")
                continue
        else:
            if (program, search) not in found:
                found[program, search] = shutil.which(program, path=search)
            if (on_path := found[program, search]) is None:
                out.append(f"{where} is not found in the worker's PATH ({search})")
                continue
            path = on_path
        if worker.user is not None and os.geteuid() == 0:
            key = (path, worker.user, worker.group)
            if key not in denied:
                denied[key] = _denied_to(path, worker.user, worker.group)
            if denied[key]:
                out.append(f"{where}: user {worker.user!r} cannot run it ({denied[key]})")
    return out


def _denied_to(path: str, user: str, group: str | None) -> str | None:
    """Why ``user`` (with ``group``) cannot execute path, by the mode bits of the path's
    directories and of the file it leads to (links followed), or None. os.access answers
    for root, who may run anything: a venv's python that is a link into /root (mode 0700)
    passed --check and then failed every spawn of a user: worker with 'permission denied'.
    (ACLs are not read: a warning, not an error.)"""
    try:
        pw = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group is not None else pw.pw_gid
    except KeyError:
        return None
    uid, gids = pw.pw_uid, set(os.getgrouplist(pw.pw_name, gid))
    if uid == 0:
        return None
    real = os.path.realpath(path)
    for p in dict.fromkeys([*_parents(os.path.abspath(path)), *_parents(real), real]):
        try:
            st = os.stat(p)
        except OSError:
            return None
        shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
        if not (st.st_mode >> shift) & 1:
            return f"{p} is mode {stat.S_IMODE(st.st_mode):04o}, owned by {st.st_uid}:{st.st_gid}"
    return None


def _parents(path: str) -> list[str]:
    """/, /a, /a/b for /a/b/c."""
    parts = path.strip("/").split("/")[:-1]
    return ["/"] + ["/" + "/".join(parts[:i + 1]) for i in range(len(parts))]


_OUTPUT_WARNINGS = 20   # then one line for the rest: 10,000 workers share one bad log_dir


def output_warnings(config: Config) -> list[str]:
    """Output files that a spawn would refuse as things stand: a log_dir or a log file's
    directory that is not a directory (or is reached through a link another user could have
    planted), a log file that is a directory, a FIFO, a link or a hard-linked file. Warnings,
    not errors: it may be fixed before the worker starts; the spawn refuses it then in the
    same words. The first instance of each worker's paths is looked at; nothing is made."""
    log_dir = config.supervisor.log_dir
    dirs: dict[str, str | None] = {}
    out: list[str] = []
    for s in _streams(config):
        path = s.pattern.replace(_MARK, "0")
        where = os.path.dirname(path)
        field = f"workers.{s.name}.{('stdout', 'stderr')[s.stream]}.path"
        if where not in dirs:
            why = dirs[where] = safefs.dir_refusal(where)
            what = 'supervisor.log_dir' if where == log_dir else field
            if why is not None:
                out.append(f"{config.path}: {what}: warning: a spawn would refuse {why}")
            elif _everyone_writes(where):
                out.append(f"{config.path}: {what}: warning: every user can write {where}: "
                           "any of them can put a file at a log file's name first, and the "
                           "spawn refuses it (the worker does not start); use a directory "
                           "only root and the worker's user can write")
        why = None if dirs[where] else safefs.log_file_refusal(path)
        if why is not None:
            out.append(f"{config.path}: {field}: warning: a spawn would refuse {why}")
    if len(out) > _OUTPUT_WARNINGS:
        more = len(out) - _OUTPUT_WARNINGS
        out[_OUTPUT_WARNINGS:] = [f"{config.path}: ... and {more} more output files like these"]
    return out


def _everyone_writes(directory: str) -> bool:
    """A directory like /tmp (not following a link: dir_refusal judged those)."""
    try:
        return bool(os.lstat(directory).st_mode & stat.S_IWOTH)
    except OSError:
        return False


def file_warnings(path: str) -> list[str]:
    """The config says what supervisord runs, as root often: a file or a directory that a user
    other than root and the daemon's own can change is a way for that user to run anything as
    the daemon. Warnings, not errors (a container's config mounted with a host user's uid is
    common, and the daemon's user decides): like a token file's owner and mode, say so."""
    trusted = (0, os.geteuid())
    out = []
    where = os.path.abspath(path)
    for target, what in ((where, "the file"), (os.path.dirname(where), "its directory")):
        try:
            st = os.stat(target)
        except OSError:
            continue
        if st.st_uid not in trusted:
            out.append(f"{path}: warning: {what} ({target}) is owned by uid {st.st_uid}, who "
                       f"can change what supervisord runs (as uid {os.geteuid()}); chown it "
                       "to root or the daemon's user")
        elif st.st_mode & 0o002 and not (what == "its directory" and st.st_mode & 0o1000):
            out.append(f"{path}: warning: {what} ({target}) is writable by every user, who "
                       f"can change what supervisord runs; chmod o-w {target}")
        elif st.st_mode & 0o020 and st.st_gid not in (0, os.getegid()):
            out.append(f"{path}: warning: {what} ({target}) is writable by group {st.st_gid}, "
                       f"whose members can change what supervisord runs; chmod g-w {target}")
    return out
