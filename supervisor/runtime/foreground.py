"""Programs that daemonize themselves: they fork, the parent exits 0 at once, and the real
server runs on outside the supervisor's watch (supervisord has the same trap). The runtime
sees it as "exited 0 within start_seconds and left processes behind in its tree" (trees.py
knows the leftovers, and kills them: a tree whose leader is gone is ended). Without cgroups a
daemon that called setsid() is out of sight, so a known daemonizing program that exits 0 at
once gets the same hint.

The hint says that programs must run in the foreground, with the program's usual flag.
"""

from __future__ import annotations

import os

# program (basename of argv[0]) -> how to keep it in the foreground
FOREGROUND_FLAGS = {
    "nginx": "-g 'daemon off;' (or daemon off; in nginx.conf)",
    "redis-server": "--daemonize no",
    "php-fpm": "--nodaemonize (-F)",
    "sshd": "-D",
    "apache2": "-DFOREGROUND",
    "httpd": "-DFOREGROUND",
    "haproxy": "-db",
    "cron": "-f",
    "crond": "-f",
    "rsyslogd": "-n",
    "dnsmasq": "-k",
    "squid": "-N",
    "memcached": "(runs in the foreground unless given -d: remove -d)",
    "postfix": "start-fg instead of start",
    "dockerd": "(runs in the foreground: do not wrap it in a script that backgrounds it)",
}


def _program(argv: list[str]) -> str:
    name = os.path.basename(argv[0]) if argv else ""
    if name.startswith("php-fpm"):          # php-fpm8.2
        return "php-fpm"
    return name


def daemonized_hint(argv: list[str], seconds: float, left: str | None) -> str | None:
    """The message for a leader that exited 0 after ``seconds`` (< start_seconds); ``left``:
    the processes it left in its tree, None when none were seen. None when nothing points to
    a program that daemonized itself."""
    program = _program(argv)
    flag = FOREGROUND_FLAGS.get(program)
    if left is None and flag is None:
        return None
    usual = f"; for {program}: {flag}" if flag else ""
    if left is None:        # nothing seen: a guess from the program's name
        return (f"{program} exited 0 after {seconds:.2f} s: it probably daemonized itself "
                "(a server that left its process group is out of the supervisor's sight). "
                f"Programs must run in the foreground{usual}")
    return (f"exited 0 after {seconds:.2f} s and left {left} behind: it daemonized itself, "
            f"and the supervisor cannot watch it. Programs must run in the foreground{usual}")
