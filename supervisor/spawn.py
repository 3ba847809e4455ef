"""Starting a worker process: its environment, its output files, its own process group.

The process is made by supervisor._spawn (clone3 with CLONE_VM|CLONE_VFORK|CLONE_PIDFD, born in
its cgroup): no copy of the daemon's memory, a pidfd with no race, and a few raw system calls in
the child before exec (signals back to default, a new session, stdio, every other fd closed,
the directory, the workers' RLIMIT_NOFILE, the user).

Every worker is started in a new session (so a new process group whose id is its PID): a stop
signal goes to the group and reaches whatever the worker forked. The daemon reaps children
itself (waitid on pidfds / SIGCHLD).

A worker with ``user:`` drops root fully, the way systemd's User= and login(1) do: that user's
uid, its primary group (or ``group:``), exactly its supplementary groups (initgroups), and
HOME, USER, LOGNAME and SHELL from its passwd entry (the worker's own ``environment:`` wins).
The passwd and group databases are read at each spawn, so a changed membership takes effect
at the next start. Its log files are made its own, mode 0600 (see logs.open_output).
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field

from supervisor import _spawn, fds
from supervisor.logs import open_output
from supervisor.paths import worker_search_path
from worker.block import ENV_BLOCK, ENV_INSTANCE, ENV_NOTIFY


@dataclass
class SpawnRequest:
    instance: str
    argv: list[str]
    directory: str | None
    environment: dict[str, str]
    user: str | None
    stdout_path: str | None
    stderr_path: str | None      # equal to stdout_path: one file for both
    block_name: str
    notify_path: str | None
    group: str | None = None     # primary group instead of the user's own (only with user)
    umask: int | None = None     # None: the daemon's
    # pipes to the daemon (stdout/stderr: daemon) instead of files; the caller closes them
    stdout_fd: int | None = None
    stderr_fd: int | None = None


@dataclass(frozen=True)
class Credentials:
    """Who a worker runs as: what the child applies between clone and exec."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    env: dict[str, str] = field(default_factory=dict)   # HOME, USER, LOGNAME (, SHELL)


class CredentialsError(ValueError):
    """The worker cannot be run as its user; str() is the whole reason (a ValueError, which
    the spawner already reports as a spawn failure)."""


def credentials(user: str, group: str | None = None) -> Credentials:
    """The uid, primary gid, supplementary groups and login variables of user (a name that
    existed when the config was loaded). Only root can switch to them: a daemon that is not
    root can run a worker as its own user and primary group, nothing else."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise CredentialsError(f"user {user!r} no longer exists on this machine") from None
    gid = pw.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise CredentialsError(f"group {group!r} no longer exists on this machine") from None
    groups = tuple(os.getgrouplist(pw.pw_name, gid))
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    if pw.pw_shell:
        env["SHELL"] = pw.pw_shell
    if os.geteuid() != 0 and (pw.pw_uid != os.geteuid() or gid != os.getegid()):
        who = f"user {user!r}" + (f" and group {group!r}" if group is not None else "")
        raise CredentialsError(f"cannot run as {who}: the daemon runs as uid {os.geteuid()}, "
                               "and only root can switch to another user or group")
    return Credentials(pw.pw_uid, gid, groups, env)


def _env_entry(key: str, value: str) -> bytes:
    """One entry of a child's environment block, as execve gets it."""
    if "=" in key or not key:
        raise ValueError(f"illegal environment variable name {key!r}")
    return os.fsencode(f"{key}={value}")


# The daemon's environment as every worker starts from it, and each of its entries encoded:
# (a copy of os.environ's raw dict it was made from, the variables, their entries). Copying
# os.environ decodes every name and value, and encoding them again for execve is as much:
# ~90 us per spawn with a 35-variable environment, as much as a tenth of a whole spawn. So it
# is worked out once and again only when os.environ changes (one C-level compare of the raw
# dicts per spawn: ~1 us).
_BASE_ENV: list[tuple[dict[bytes, bytes], dict[str, str], dict[str, bytes]]] = []


def _base_environment() -> tuple[dict[str, str], dict[str, bytes]]:
    """The daemon's own environment for a worker: systemd's variables and the fd-limit one
    left out, PATH the workers' search path; and each variable's encoded entry."""
    raw: dict[bytes, bytes] | None = getattr(os.environ, "_data", None)
    if _BASE_ENV and raw is not None and _BASE_ENV[0][0] == raw:
        return _BASE_ENV[0][1], _BASE_ENV[0][2]
    env = dict(os.environ)
    env["PATH"] = worker_search_path(env.get("PATH"))
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
              "INVOCATION_ID"):
        env.pop(k, None)   # systemd's protocol is the daemon's, not its workers'
    env.pop(fds.ENV_WORKER_NOFILE, None)
    encoded = {k: _env_entry(k, v) for k, v in env.items()}
    if raw is not None:
        _BASE_ENV[:] = [(dict(raw), env, encoded)]
    return env, encoded


def child_environment(req: SpawnRequest, creds: Credentials | None = None) -> dict[str, str]:
    env = dict(_base_environment()[0])
    if creds is not None:
        env.pop("SHELL", None)         # like systemd: no SHELL when the passwd entry has none
        env.update(creds.env)
    env.update(req.environment)
    env[ENV_BLOCK] = req.block_name
    env[ENV_INSTANCE] = req.instance
    if req.notify_path:
        env[ENV_NOTIFY] = req.notify_path
    return env


def spawn(req: SpawnRequest, cgroup_fd: int = -1) -> tuple[int, int]:
    """Start the worker; returns (pid, pidfd). cgroup_fd: the directory of the cgroup it is
    born in (-1: the daemon's own). Raises OSError (e.g. FileNotFoundError) if it cannot be
    executed, ChildSetupError if the child could not be set up (directory, user),
    CredentialsError if it cannot be run as its user."""
    creds = credentials(req.user, req.group) if req.user is not None else None
    # Root switches (all three, or root's own groups would stay); a daemon running a worker
    # as its own user leaves its credentials alone (setgroups needs root).
    run_as = creds if os.geteuid() == 0 else None
    owner = (run_as.uid, run_as.gid) if run_as is not None else None
    env = child_environment(req, creds)
    base, encoded = _base_environment()
    # a variable still the daemon's own (the very object) has its entry made already
    envp = [encoded[k] if v is base.get(k) else _env_entry(k, v) for k, v in env.items()]
    argv = [os.fsencode(a) for a in req.argv]
    if not argv:
        raise ValueError("empty command")
    cwd = os.fsencode(req.directory) if req.directory is not None else None
    ids = (run_as.uid, run_as.gid, run_as.groups) if run_as is not None else None
    out_fd = err_fd = None
    try:
        if req.stdout_path:
            out_fd = open_output(req.stdout_path, owner)
        if req.stderr_path:
            err_fd = (out_fd if req.stderr_path == req.stdout_path
                      else open_output(req.stderr_path, owner))
        null = _devnull()
        stdout = req.stdout_fd if req.stdout_fd is not None else out_fd
        stderr = req.stderr_fd if req.stderr_fd is not None else err_fd
        pid, fd_or_errno, stage = _spawn.spawn(
            _exec_candidates(argv[0], env), argv, envp, cwd,
            (null, null if stdout is None else stdout, null if stderr is None else stderr),
            fds.worker_limit(), ids, cgroup_fd, _LOW[0] if _LOW else None,
            -1 if req.umask is None else req.umask)
    finally:
        for fd in {out_fd, err_fd}:
            if fd is not None:
                os.close(fd)
    if pid == 0:
        raise _child_error(stage, fd_or_errno, req, ids)
    return pid, fd_or_errno


class ChildSetupError(ValueError):
    """The child process could not be set up before exec (its directory, its user): str() is
    the whole reason."""


def _child_error(stage: int, err: int, req: SpawnRequest,
                 ids: tuple[int, int, tuple[int, ...]] | None) -> Exception:
    why = os.strerror(err)
    if stage == _spawn.ST_EXEC:
        return OSError(err, why, req.argv[0])    # FileNotFoundError, PermissionError, ...
    if stage == _spawn.ST_CWD:
        return ChildSetupError(f"cannot start in its directory {req.directory!r}: {why}")
    if stage == _spawn.ST_IDS and ids is not None:
        return ChildSetupError(f"cannot switch to uid {ids[0]}, gid {ids[1]}: {why}")
    what = {_spawn.ST_SESSION: "a new session", _spawn.ST_STDIO: "its stdin/stdout/stderr",
            _spawn.ST_RLIMIT: "its RLIMIT_NOFILE"}.get(stage, "the child")
    return ChildSetupError(f"cannot set up {what}: {why}")


def _exec_candidates(argv0: bytes, env: dict[str, str]) -> list[bytes]:
    """Where the child looks for argv[0] (as subprocess does: the child's PATH when argv[0]
    has no slash)."""
    if b"/" in argv0:
        return [argv0]
    return [os.path.join(os.fsencode(d), argv0) for d in os.get_exec_path(env)] or [argv0]


_DEVNULL: list[int] = []
_LOW: list[tuple[int, int, int]] = []


def reserve_low_fds() -> None:
    """Three placeholder fds of /dev/null, opened while fd numbers are still low (at daemon
    start): a spawn dup's the worker's stdio onto them, so that the child copies only the fds
    below them instead of the daemon's whole table (see supervisor/_spawn.c)."""
    if not _LOW:
        a, b, c = (os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) for _ in range(3))
        _LOW.append((a, b, c))


def _devnull() -> int:
    """One fd of /dev/null for every worker's stdin (and unlogged output), opened once."""
    if not _DEVNULL:
        _DEVNULL.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
    return _DEVNULL[0]
