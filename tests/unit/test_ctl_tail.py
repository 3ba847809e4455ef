"""supervisorctl tail: the daemon names the files, the client reads (and follows) them itself."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.wait import wait_until
from tests.unit import test_ctl
from tests.unit.test_ctl import Fake, child_env, ctl, ctl_argv

# test_ctl's fixtures, shared by name (lt: tests/conftest.py)
run_dir = test_ctl.run_dir
daemon = test_ctl.daemon


@pytest.fixture
def logs(daemon: Fake, tmp_path: Path) -> tuple[Path, Path]:
    out, err = tmp_path / "web-0.out.log", tmp_path / "web-0.err.log"
    out.write_bytes(b"".join(b"line %d\n" % i for i in range(1, 16)))
    err.write_bytes(b"oops 1\noops 2")  # no trailing newline
    daemon.rec.replies["tail"] = {"code": 0, "data": {"stdout": str(out), "stderr": str(err)}}
    return out, err


def test_last_ten_lines_by_default(daemon: Fake, logs: tuple[Path, Path]) -> None:
    result = ctl("-c", str(daemon.config), "tail", "--stdout", "web:0")
    expected = "".join(f"line {i}\n" for i in range(6, 16))
    assert (result.exit_code, result.stdout, result.stderr) == (0, expected, "")
    assert daemon.rec.requests == [
        {"cmd": "tail", "targets": ["web:0"], "opts": {"stream": "stdout"}}
    ]


def test_both_streams_by_default_under_headers(daemon: Fake, logs: tuple[Path, Path]) -> None:
    """A crashed program's error is on stderr: plain tail shows both files, as tail(1) shows
    two files (an empty one keeps its header)."""
    out, err = logs
    result = ctl("-c", str(daemon.config), "tail", "-n", "2", "web:0")
    assert (result.exit_code, result.stdout, result.stderr) == (
        0, f"==> {out} <==\nline 14\nline 15\n\n==> {err} <==\noops 1\noops 2", "")
    assert daemon.rec.requests == [
        {"cmd": "tail", "targets": ["web:0"], "opts": {"stream": "both"}}
    ]
    err.write_bytes(b"")
    result = ctl("-c", str(daemon.config), "tail", "-n", "1", "web:0")
    assert result.stdout == f"==> {out} <==\nline 15\n\n==> {err} <==\n"
    daemon.rec.replies["tail"] = {"code": 0, "data": {"stdout": str(out), "stderr": str(out)}}
    result = ctl("-c", str(daemon.config), "tail", "-n", "1", "web:0")
    assert result.stdout == "line 15\n"        # stderr: stdout, one file: no header


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--stdout", "-n", "2"], "line 14\nline 15\n"),
        (["--stdout", "-n", "0"], ""),
        (["--stdout", "-n", "100"], "".join(f"line {i}\n" for i in range(1, 16))),
        (["--stderr", "-n", "1"], "oops 2"),
        (["--stderr"], "oops 1\noops 2"),
    ],
)
def test_line_counts_and_streams(
    daemon: Fake, logs: tuple[Path, Path], args: list[str], expected: str
) -> None:
    result = ctl("-c", str(daemon.config), "tail", *args, "web:0")
    assert (result.exit_code, result.stdout, result.stderr) == (0, expected, "")


def test_long_file_reads_back_in_chunks(daemon: Fake, logs: tuple[Path, Path]) -> None:
    out, _err = logs
    out.write_bytes(b"".join(b"%05d %s\n" % (i, b"y" * 100) for i in range(5000)))
    result = ctl("-c", str(daemon.config), "tail", "--stdout", "-n", "300", "web:0")
    lines = result.stdout.splitlines()
    assert (result.exit_code, len(lines), lines[0][:5], lines[-1][:5]) == (0, 300, "04700", "04999")


def test_missing_file_prints_nothing(daemon: Fake, logs: tuple[Path, Path]) -> None:
    logs[0].unlink()
    result = ctl("-c", str(daemon.config), "tail", "--stdout", "web:0")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


def test_daemon_error_is_printed(daemon: Fake) -> None:
    daemon.rec.replies["tail"] = {"code": 4, "err": "no such instance: web:9\n"}
    result = ctl("-c", str(daemon.config), "tail", "web:9")
    assert (result.exit_code, result.stdout, result.stderr) == (4, "", "no such instance: web:9\n")


def test_no_file_named(daemon: Fake) -> None:
    daemon.rec.replies["tail"] = {"code": 0, "data": {"stdout": None, "stderr": None}}
    result = ctl("-c", str(daemon.config), "tail", "--stdout", "web:0")
    assert (result.exit_code, result.stdout, result.stderr) == (
        1,
        "",
        "supervisorctl: web:0: supervisord names no stdout log file for it\n",
    )
    daemon.rec.replies["tail"] = {"code": 0, "data": {
        "stdout": None, "stderr": None,
        "elsewhere": "its stdout goes to supervisord's own output; its stderr is discarded"}}
    result = ctl("-c", str(daemon.config), "tail", "web:0")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", (
        "supervisorctl: web:0: supervisord names no output log file for it (its stdout goes "
        "to supervisord's own output; its stderr is discarded)\n"))


# -- follow, in a real process ---------------------------------------------------------------------
class Output:
    """Non-blocking reader of a child's stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""

    def read(self) -> bytes:
        """What the child wrote so far."""
        with contextlib.suppress(BlockingIOError):
            self.buf += os.read(self.fd, 65536)
        return self.buf

    def wait_for(self, expected: bytes, timeout: float = 10.0) -> None:
        wait_until(self.read, timeout, f"output {expected!r}", ok=lambda buf: buf == expected)


@pytest.fixture
def follower(
    daemon: Fake, logs: tuple[Path, Path], run_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    argv = ctl_argv(run_dir, "-c", str(daemon.config), "tail", "-f", "--stdout", "-n", "2", "web:0")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_follow_appends_rotation_truncation_and_ctrl_c(
    follower: subprocess.Popen[bytes], logs: tuple[Path, Path]
) -> None:
    log = logs[0]
    out = Output(follower)
    seen = b"line 14\nline 15\n"
    out.wait_for(seen)

    with open(log, "ab") as f:
        f.write(b"appended\n")
    seen += b"appended\n"
    out.wait_for(seen)

    os.rename(log, f"{log}.1")  # rotation: the old file gets a last line, then a new file
    with open(f"{log}.1", "ab") as f:
        f.write(b"late in old\n")
    log.write_bytes(b"new file\n")
    seen += b"late in old\nnew file\n"
    out.wait_for(seen)

    with open(log, "ab") as f:
        f.write(b"more in the new file\n")
    seen += b"more in the new file\n"
    out.wait_for(seen)

    # truncation (copytruncate rotation); the new content is shorter than what was read, so the
    # shrink is seen whenever the follower polls
    log.write_bytes(b"truncated\n")
    seen += b"truncated\n"
    out.wait_for(seen)

    follower.send_signal(signal.SIGINT)
    _stdout, stderr = follower.communicate(timeout=10)
    assert (follower.returncode, stderr) == (0, b"")


def test_logs_bounds_lines_and_prefixes_streams(tmp_path: Path) -> None:
    """A line longer than MAX_LINE is cut; a partial line waits for its end; stderr is '!'."""
    import io

    from supervisor.ctl.logs import MAX_LINE, _Stream
    out = io.BytesIO()
    s = _Stream("w:0", "stderr", str(tmp_path / "x"), 5)
    s.lines(b"a" * (MAX_LINE + 3) + b"\nhalf", out)
    assert out.getvalue() == b"w:0   ! " + b"a" * MAX_LINE + b"\nw:0   ! aaa\n"
    s.lines(b" done\n", out)
    assert out.getvalue().endswith(b"w:0   ! half done\n")
    out = io.BytesIO()
    s.lines(b"b" * (3 * MAX_LINE), out)          # no newline at all: never held whole
    assert out.getvalue().count(b"\n") == 3 and s.partial == b""
