from collections.abc import Sequence

HAVE_CGROUP: int
ST_SETUP: int
ST_SESSION: int
ST_STDIO: int
ST_CWD: int
ST_RLIMIT: int
ST_IDS: int
ST_EXEC: int
ST_UNSHARE: int

def spawn(
    paths: Sequence[bytes],
    argv: Sequence[bytes],
    envp: Sequence[bytes],
    cwd: bytes | None,
    stdio: tuple[int, int, int],
    nofile: tuple[int, int] | None,
    ids: tuple[int, int, Sequence[int]] | None,
    cgroup_fd: int,
    low: tuple[int, int, int] | None = None,
    umask: int = -1,
    /,
) -> tuple[int, int, int]: ...
