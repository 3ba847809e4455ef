"""``user:`` drops root fully: the worker gets that user's uid, primary group (or ``group:``)
and exactly its supplementary groups, HOME/USER/LOGNAME/SHELL from its passwd entry, and log
files only it can read. The root tests run real daemons with shell workers as a throw-away
system user (a Python worker would need an interpreter that user can execute)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor import spawn as sp
from supervisor.config import ConfigError, load_config
from tests.support.wait import wait_until

REPORT = ('id -u; id -g; id -G; echo "env=$HOME|$USER|$LOGNAME|$SHELL"; '
          'echo reports-done; exec sleep 1000')


@dataclass
class Unprivileged:
    name: str
    uid: int
    gid: int            # its own (user private) group
    extra: str          # a second group it is a member of
    extra_gid: int
    dir: Path           # a directory everybody can traverse (tmp_path is root's only)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture
def unpriv() -> Iterator[Unprivileged]:
    """A new system user pvt<hex> (with its own group) that is also in group pvg<hex>; both
    are removed afterwards, pass or fail."""
    tag = uuid.uuid4().hex[:8]
    name, extra = f"pvt{tag}", f"pvg{tag}"
    where = Path(tempfile.mkdtemp(prefix="pyvisor-user-"))
    made_user = made_group = False
    try:
        os.chmod(where, 0o755)
        _run("useradd", "--system", "--user-group", "--shell", "/bin/sh", "--home-dir",
             "/nonexistent", "--no-create-home", name)
        made_user = True
        _run("groupadd", "--system", extra)
        made_group = True
        _run("usermod", "-aG", extra, name)
        pw = pwd.getpwnam(name)
        yield Unprivileged(name, pw.pw_uid, pw.pw_gid, extra, grp.getgrnam(extra).gr_gid, where)
    finally:
        problems = []
        for made, argv in ((made_user, ["userdel", name]), (made_group, ["groupdel", extra])):
            if made:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    problems.append(f"{' '.join(argv)}: {r.stderr.strip()}")
        shutil.rmtree(where, ignore_errors=True)
        assert not problems, "could not remove the test's user or group: " + "; ".join(problems)


@pytest.fixture
def udaemon(unpriv: Unprivileged, daemon: Any) -> Any:
    """The e2e ``daemon`` fixture, set up after ``unpriv`` so that it is torn down first: its
    workers (running as the user) are gone before userdel, which refuses a user in use."""
    return daemon


def _wait(pred: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    return wait_until(pred, timeout, what)


def _report(path: Path) -> list[str]:
    """The lines a REPORT worker wrote, once it wrote them all."""
    def done() -> list[str] | None:
        text = path.read_text() if path.exists() else ""
        return text.splitlines() if "reports-done" in text else None
    lines: list[str] = _wait(done, f"the worker's report in {path}")
    return lines


def _worker(user: str, command: str, **kw: Any) -> dict[str, Any]:
    return {"command": ["sh", "-c", command], "user": user, "start_seconds": 0.2,
            "stderr": "stdout", **kw}


def _owner_mode(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.mark.parametrize("override", [False, True], ids=["own-group", "group-override"])
@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create users")
def test_worker_has_exactly_the_users_credentials(udaemon: Any, unpriv: Unprivileged,
                                                  override: bool) -> None:
    logs = unpriv.dir / "logs"
    kw: dict[str, Any] = {"group": unpriv.extra} if override else {}
    d = udaemon({"w": _worker(unpriv.name, REPORT, **kw)}, supervisor={"log_dir": str(logs)})
    out = logs / "w-0.out.log"
    lines = _report(out)
    gid = unpriv.extra_gid if override else unpriv.gid
    # initgroups: the primary group plus the groups that list the user, nothing of root's
    groups = set(os.getgrouplist(unpriv.name, gid))
    assert groups == ({unpriv.extra_gid} if override else {unpriv.gid, unpriv.extra_gid})
    assert lines[0] == str(unpriv.uid)
    assert lines[1] == str(gid)
    assert {int(g) for g in lines[2].split()} == groups
    assert lines[3] == f"env=/nonexistent|{unpriv.name}|{unpriv.name}|/bin/sh"
    # its log file: the daemon made it, it belongs to the worker alone
    assert _owner_mode(out) == (unpriv.uid, gid, 0o600)
    d.wait_state("w:0", "RUNNING")      # start_seconds may not be over when the report is in


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create users")
def test_worker_cannot_read_root_files_or_other_logs(udaemon: Any, unpriv: Unprivileged) -> None:
    logs = unpriv.dir / "logs"
    secret = unpriv.dir / "secret"
    secret.write_text("root only\n")
    os.chown(secret, 0, 0)
    os.chmod(secret, 0o640)
    other = logs / "other-0.out.log"
    probe = (f"cat {other} 2>&1; echo other-rc=$?; cat {secret} 2>&1; echo secret-rc=$?; "
             "echo reports-done; exec sleep 1000")
    d = udaemon({"other": {"command": ["sh", "-c", "echo other-secret; exec sleep 1000"],
                          "start_seconds": 0.2},
                "w": {**_worker(unpriv.name, probe), "depends_on": ["other"]}},
               supervisor={"log_dir": str(logs)})
    lines = _report(logs / "w-0.out.log")
    # the root worker's log stays root's (0640 root:root), which root's group used to open
    assert _owner_mode(other)[:2] == (0, 0)
    assert "other-secret" in other.read_text()
    text = "\n".join(lines)
    assert "other-rc=1" in text and "secret-rc=1" in text, text
    assert text.count("Permission denied") == 2, text
    assert "other-secret" not in text and "root only" not in text
    d.stop()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create users")
def test_rotated_backup_keeps_owner_and_mode(udaemon: Any, unpriv: Unprivileged) -> None:
    logs = unpriv.dir / "logs"
    flood = "i=0; while [ $i -lt 40 ]; do echo line-$i; i=$((i+1)); done; exec sleep 1000"
    udaemon({"w": _worker(unpriv.name, flood, stdout={"max_bytes": 100, "backups": 2})},
           supervisor={"log_dir": str(logs)})
    backup = logs / "w-0.out.log.1"
    _wait(lambda: backup.exists() and backup.stat().st_size > 0, "a rotated backup")
    assert _owner_mode(backup) == (unpriv.uid, unpriv.gid, 0o600)
    assert _owner_mode(logs / "w-0.out.log") == (unpriv.uid, unpriv.gid, 0o600)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create users")
def test_a_log_file_of_another_owner_is_never_handed_over(udaemon: Any,
                                                          unpriv: Unprivileged) -> None:
    """A file that is not the worker's (left by a run as root, or another worker's log, or
    the config, moved there by whoever can write the directory) is refused, not chown'ed to
    the worker's user: that would hand the user a file that is not theirs."""
    logs = unpriv.dir / "logs"
    logs.mkdir()
    out = logs / "w-0.out.log"
    out.write_text("root's output\n")
    os.chmod(out, 0o640)
    d = udaemon({"w": {**_worker(unpriv.name, REPORT), "start_retries": 0}},
                supervisor={"log_dir": str(logs)})
    d.wait_state("w:0", "FATAL")
    d.wait_log(r"w-0\.out\.log: is owned by uid 0, not by the worker's uid \d+; it was not made "
               r"for this worker")
    assert out.read_text() == "root's output\n"
    assert _owner_mode(out) == (0, 0, 0o640)


def _load(tmp_path: Path, worker: str) -> str:
    path = tmp_path / "app.yaml"
    path.write_text(f"workers:\n  w:\n    command: x\n{worker}")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    return str(e.value)


def test_unknown_group_is_refused_at_load(tmp_path: Path) -> None:
    msg = _load(tmp_path, "    user: root\n    group: no-such-group-pyvisor\n")
    assert "app.yaml:5: workers.w.group: no such group on this machine " \
           "(got 'no-such-group-pyvisor')" in msg


def test_group_without_user_is_refused_at_load(tmp_path: Path) -> None:
    msg = _load(tmp_path, "    group: root\n")
    assert "workers.w: group: 'root' replaces the primary group of user:, which is not set; " \
           "set user: too" in msg


def test_uid_without_passwd_entry_is_refused_at_load(tmp_path: Path) -> None:
    free = next(u for u in range(60999, 50000, -1) if not _has_uid(u))
    msg = _load(tmp_path, f"    user: {free}\n    group: 0\n")
    assert f"workers.w.user: no such user on this machine (got {free})" in msg


def _has_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _request(env: dict[str, str]) -> sp.SpawnRequest:
    return sp.SpawnRequest("w:0", ["true"], None, env, "root", None, None, "b", None)


def test_environment_of_the_worker_wins_and_no_empty_shell(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("SHELL", "/bin/daemons-shell")
    creds = sp.Credentials(5, 5, (5,), {"HOME": "/h", "USER": "u", "LOGNAME": "u"})
    env = sp.child_environment(_request({"HOME": "/mine"}), creds)
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == ("/mine", "u", "u")
    assert "SHELL" not in env       # the passwd entry has none: not the daemon's either


def test_daemon_not_root_cannot_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    other = pwd.getpwuid(0).pw_name
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    with pytest.raises(sp.CredentialsError) as e:
        sp.spawn(_request({}))
    assert str(e.value) == (f"cannot run as user {other!r}: the daemon runs as uid 4242, and "
                            "only root can switch to another user or group")
