"""Starting a worker process: its environment, its output files, its own process group.

Every worker is started in a new session (so a new process group whose id is its PID): a stop
signal goes to the group and reaches whatever the worker forked. The daemon reaps children
itself (waitid on pidfds / SIGCHLD), so the Popen object is kept only to stop the subprocess
module from reaping behind our back, and is told the exit status once we have it.

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
import subprocess
from dataclasses import dataclass, field

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
    """Who a worker runs as: what subprocess applies in the child between fork and exec."""

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


def child_environment(req: SpawnRequest, creds: Credentials | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = worker_search_path(env.get("PATH"))
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
              "INVOCATION_ID"):
        env.pop(k, None)   # systemd's protocol is the daemon's, not its workers'
    if creds is not None:
        env.pop("SHELL", None)         # like systemd: no SHELL when the passwd entry has none
        env.update(creds.env)
    env.update(req.environment)
    env[ENV_BLOCK] = req.block_name
    env[ENV_INSTANCE] = req.instance
    if req.notify_path:
        env[ENV_NOTIFY] = req.notify_path
    return env


def spawn(req: SpawnRequest) -> subprocess.Popen[bytes]:
    """Start the worker; raises OSError (e.g. FileNotFoundError) if it cannot be executed,
    CredentialsError if it cannot be run as its user."""
    creds = credentials(req.user, req.group) if req.user is not None else None
    # Root switches (all three, or root's own groups would stay); a daemon running a worker
    # as its own user leaves its credentials alone (setgroups needs root).
    run_as = creds if os.geteuid() == 0 else None
    owner = (run_as.uid, run_as.gid) if run_as is not None else None
    out_fd = err_fd = None
    try:
        if req.stdout_path:
            out_fd = open_output(req.stdout_path, owner)
        if req.stderr_path:
            err_fd = (out_fd if req.stderr_path == req.stdout_path
                      else open_output(req.stderr_path, owner))
        stdout = req.stdout_fd if req.stdout_fd is not None else out_fd
        stderr = req.stderr_fd if req.stderr_fd is not None else err_fd
        return subprocess.Popen(
            req.argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=stderr if stderr is not None else subprocess.DEVNULL,
            umask=req.umask if req.umask is not None else -1,
            cwd=req.directory,
            env=child_environment(req, creds),
            user=run_as.uid if run_as is not None else None,
            group=run_as.gid if run_as is not None else None,
            extra_groups=list(run_as.groups) if run_as is not None else None,
            start_new_session=True,
            close_fds=True,
            restore_signals=True,
        )
    finally:
        for fd in {out_fd, err_fd}:
            if fd is not None:
                os.close(fd)
