"""Starting a worker process: its environment, its output files, its own process group.

Every worker is started in a new session (so a new process group whose id is its PID): a stop
signal goes to the group and reaches whatever the worker forked. The daemon reaps children
itself (waitid on pidfds / SIGCHLD), so the Popen object is kept only to stop the subprocess
module from reaping behind our back, and is told the exit status once we have it.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from dataclasses import dataclass

from supervisor.logs import open_output
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


def child_environment(req: SpawnRequest) -> dict[str, str]:
    env = dict(os.environ)
    # The daemon's own interpreter directory first: `python3 -m worker` in a config then runs
    # with the same venv, where the worker library is installed.
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    if bindir not in path.split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + path
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
              "INVOCATION_ID"):
        env.pop(k, None)   # systemd's protocol is the daemon's, not its workers'
    env.update(req.environment)
    env[ENV_BLOCK] = req.block_name
    env[ENV_INSTANCE] = req.instance
    if req.notify_path:
        env[ENV_NOTIFY] = req.notify_path
    return env


def _user_gid(user: str | None) -> int | None:
    if user is None or os.geteuid() != 0:
        return None
    return (pwd.getpwuid(int(user)) if user.isdecimal() else pwd.getpwnam(user)).pw_gid


def spawn(req: SpawnRequest) -> subprocess.Popen[bytes]:
    """Start the worker; raises OSError (e.g. FileNotFoundError) if it cannot be executed."""
    out_fd = err_fd = None
    try:
        if req.stdout_path:
            out_fd = open_output(req.stdout_path)
        if req.stderr_path:
            err_fd = out_fd if req.stderr_path == req.stdout_path else open_output(req.stderr_path)
        return subprocess.Popen(
            req.argv,
            stdin=subprocess.DEVNULL,
            stdout=out_fd if out_fd is not None else subprocess.DEVNULL,
            stderr=err_fd if err_fd is not None else subprocess.DEVNULL,
            cwd=req.directory,
            env=child_environment(req),
            user=req.user,
            # under user:, the user's own group and no supplementary groups (not root's)
            group=_user_gid(req.user),
            extra_groups=[] if req.user is not None and os.geteuid() == 0 else None,
            start_new_session=True,
            close_fds=True,
            restore_signals=True,
        )
    finally:
        for fd in {out_fd, err_fd}:
            if fd is not None:
                os.close(fd)
