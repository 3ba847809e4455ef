"""supervisorctl against a fake daemon: a real ControlServer with a recording handler.

The runtime directory (where the locator lives) is redirected to tmp_path by patching
supervisor.paths.runtime_dir, in process (CliRunner) and in subprocesses (see ``ctl_argv``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from supervisor import paths
from supervisor.ctl.cli import cli
from tests.unit.test_server_harness import LoopThread, Recorder, start_server

REPO = Path(__file__).resolve().parents[2]
REPLY = {"code": 5, "out": "web:0 FATAL\n", "err": "web:0: could not start\n", "data": None}


@dataclass
class Fake:
    config: Path
    socket: str
    rec: Recorder
    lt: LoopThread


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setattr(paths, "runtime_dir", lambda: str(d))
    monkeypatch.delenv(paths.ENV_CONFIG, raising=False)
    return d


@pytest.fixture
def daemon(lt: LoopThread, tmp_path: Path, run_dir: Path) -> Fake:
    config = tmp_path / "app.yaml"
    config.write_text("workers: {}\n")
    sock = str(run_dir / "ctl.sock")
    _server, rec = start_server(lt, sock)
    paths.write_locator(str(config), sock, os.getpid())
    return Fake(config, sock, rec, lt)


def ctl(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(
        cli, list(args), prog_name="supervisorctl", env=env, terminal_width=100
    )


def ctl_argv(run_dir: Path, *args: str) -> list[str]:
    """supervisorctl in a subprocess, with its runtime dir redirected to run_dir."""
    code = (
        "import supervisor.paths as p; "
        f"p.runtime_dir = lambda: {str(run_dir)!r}; "
        "from supervisor.ctl.main import main; main()"
    )
    return [sys.executable, "-c", code, *args]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != paths.ENV_CONFIG}
    env["PYTHONPATH"] = str(REPO)
    return env


# -- requests per verb --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "cmd", "targets", "opts"),
    [
        (["status"], "status", ["all"], {"json": False}),
        (["status", "web", "db:1", "--json"], "status", ["web", "db:1"], {"json": True}),
        (["start", "web"], "start", ["web"], {"wait": True}),
        (["start", "--no-wait", "web:0", "all"], "start", ["web:0", "all"], {"wait": False}),
        (["stop", "web"], "stop", ["web"], {"graceful": None, "wait": True}),
        (
            ["stop", "--graceful", "--no-wait", "web"],
            "stop",
            ["web"],
            {"graceful": True, "wait": False},
        ),
        (["restart", "web:1"], "restart", ["web:1"], {"graceful": None, "wait": True}),
        (["restart", "--graceful", "all"], "restart", ["all"], {"graceful": True, "wait": True}),
        (["stop", "--signal", "web"], "stop", ["web"], {"graceful": False, "wait": True}),
        (["signal", "hup", "web"], "signal", ["web"], {"signal": "SIGHUP"}),
        (["signal", "SIGUSR1", "web:0", "db"], "signal", ["web:0", "db"], {"signal": "SIGUSR1"}),
        (["signal", "15", "web"], "signal", ["web"], {"signal": "SIGTERM"}),
        (["reload"], "reload", [], {}),
        (["shutdown"], "shutdown", [], {"wait": True}),
        (["shutdown", "--no-wait"], "shutdown", [], {"wait": False}),
        (["pid"], "pid", [], {}),
        (["pid", "web", "db:0"], "pid", ["web", "db:0"], {}),
        (["reexec"], "reexec", [], {}),
    ],
)
def test_verb_sends_request_and_prints_reply(
    daemon: Fake, args: list[str], cmd: str, targets: list[str], opts: dict[str, Any]
) -> None:
    daemon.rec.replies[cmd] = REPLY
    result = ctl("-c", str(daemon.config), *args)
    assert daemon.rec.requests == [{"cmd": cmd, "targets": targets, "opts": opts}]
    assert (result.exit_code, result.stdout, result.stderr) == (
        5,
        "web:0 FATAL\n",
        "web:0: could not start\n",
    )


def test_success_prints_out_only(daemon: Fake) -> None:
    daemon.rec.replies["status"] = {"code": 0, "out": "web:0  RUNNING  pid 42\n"}
    result = ctl("-c", str(daemon.config), "status")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "web:0  RUNNING  pid 42\n", "")


def test_config_from_environment(daemon: Fake) -> None:
    result = ctl("pid", env={paths.ENV_CONFIG: str(daemon.config)})
    assert (result.exit_code, daemon.rec.requests) == (
        0,
        [{"cmd": "pid", "targets": [], "opts": {}}],
    )


def test_relative_config_and_default_config(daemon: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(daemon.config.parent)
    assert ctl("-c", daemon.config.name, "pid").exit_code == 0
    os.rename(daemon.config, "supervisord.yaml")
    paths.write_locator("supervisord.yaml", daemon.socket, os.getpid())
    assert ctl("pid").exit_code == 0
    assert len(daemon.rec.requests) == 2


def test_no_config_at_all(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = ctl("status")
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        (
            "supervisorctl: no config file and no supervisord running: give -c FILE, set "
            "PYVISOR_CONFIG (e.g. in .venv/bin/activate), or run it where ./supervisord.yaml "
            "is\n"
        ),
    )


def test_a_directory_given_as_config(run_dir: Path, tmp_path: Path) -> None:
    result = ctl("-c", str(tmp_path), "status")
    assert (result.exit_code, result.stdout, result.stderr) == (
        3, "", f"supervisorctl: {tmp_path} is a directory, not a config file (and so no "
        "supervisord runs it)\n")


def test_without_config_the_one_running_daemon_is_used(
    daemon: Fake, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    daemon.rec.replies["pid"] = {"code": 0, "out": "123\n"}
    result = ctl("pid")
    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        "123\n",
        f"supervisorctl: using {daemon.config}, the one supervisord running (-c FILE chooses)\n",
    )
    # a locator that is not ours, garbage, or names a dead daemon does not count
    (run_dir / "0123456789ab.json").write_text("{nope")
    (run_dir / "zz.json").write_text("{}")
    other = tmp_path / "other.yaml"
    other.write_text("workers: {}\n")
    paths.write_locator(str(other), str(run_dir / "x.sock"), 2**22 + 12345)  # no such pid
    assert ctl("pid").exit_code == 0
    paths.write_locator(str(other), str(run_dir / "x.sock"), os.getpid())
    result = ctl("pid")
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        "supervisorctl: 2 supervisords are running; give -c FILE, set PYVISOR_CONFIG (e.g. in "
        f".venv/bin/activate), or run it where ./supervisord.yaml is:\n  {daemon.config}\n"
        f"  {other}\n",
    )


def test_timeout_waiting_for_reply(daemon: Fake) -> None:
    daemon.rec.replies["start"] = None  # never answers
    result = ctl("-c", str(daemon.config), "--timeout", "0.3", "start", "web")
    assert daemon.rec.requests == [{"cmd": "start", "targets": ["web"], "opts": {"wait": True}}]
    assert (result.exit_code, result.stdout, result.stderr) == (
        6,
        "",
        (
            "supervisorctl: no reply from supervisord within 0.3 s; the request may still complete "
            f"(see: supervisorctl -c {daemon.config} status)\n"
        ),
    )


# -- usage errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "usage", "error"),
    [
        (
            ["start", "we/b"],
            "start [OPTIONS] TARGETS...",
            "Invalid value for 'TARGETS...': 'we/b' is not a target: give NAME, NAME:INDEX or all",
        ),
        (["stop"], "stop [OPTIONS] TARGETS...", "Missing argument 'TARGETS...'."),
        (
            ["signal", "NOPE", "web"],
            "signal [OPTIONS] SIGNAL TARGETS...",
            "Invalid value for 'SIGNAL': 'NOPE' is not a signal (e.g. HUP, TERM, USR1, 15)",
        ),
        (
            ["tail", "web:x"],
            "tail [OPTIONS] TARGET",
            "Invalid value for 'TARGET': 'web:x' is not a target: give NAME, NAME:INDEX or all",
        ),
    ],
)
def test_usage_errors(daemon: Fake, args: list[str], usage: str, error: str) -> None:
    result = ctl("-c", str(daemon.config), *args)
    verb = args[0]
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        (
            f"Usage: supervisorctl {usage}\nTry 'supervisorctl {verb} --help' for help.\n\n"
            f"Error: {error}\n"
        ),
    )
    assert daemon.rec.requests == []


# -- no daemon -----------------------------------------------------------------------------------
def test_not_running_in_a_real_process(tmp_path: Path) -> None:
    config = tmp_path / "app.yaml"
    config.write_text("workers: {}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor.ctl.main", "-c", str(config), "status"],
        check=False,
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        3,
        "",
        (
            f"supervisorctl: no supervisord is running for {config} "
            f"(start it with: supervisord -c {config})\n"
        ),
    )


@pytest.mark.parametrize("leftover", ["no socket file", "dead socket file"])
def test_stale_locator_means_not_running(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leftover: str
) -> None:
    import socket

    monkeypatch.chdir(tmp_path)
    Path("app.yaml").write_text("workers: {}\n")
    sock = str(run_dir / "ctl.sock")
    if leftover == "dead socket file":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(sock)
        s.close()
    paths.write_locator("app.yaml", sock, 999_999)
    result = ctl("-c", "app.yaml", "stop", "web")
    assert (result.exit_code, result.stdout, result.stderr) == (
        3,
        "",
        (
            "supervisorctl: no supervisord is running for app.yaml "
            "(start it with: supervisord -c app.yaml)\n"
        ),
    )


# -- help and completion -------------------------------------------------------------------------
def test_help_lists_exit_codes() -> None:
    result = ctl("--help")
    assert result.exit_code == 0
    assert result.stdout == HELP


HELP = """\
Usage: supervisorctl [OPTIONS] COMMAND [ARGS]...

  Control the supervisord that runs FILE.

  Targets: NAME (every instance of a worker), NAME:INDEX (one instance), all.
  Shell completion (bash; zsh and fish likewise with zsh_source / fish_source):
    eval "$(_SUPERVISORCTL_COMPLETE=bash_source supervisorctl)"

Options:
  -c, --config FILE  The config file supervisord runs (default: $PYVISOR_CONFIG, else
                     ./supervisord.yaml).
  --timeout SECONDS  Give up waiting for supervisord's answer after SECONDS (exit 6). Default: wait
                     as long as the operation takes.  [x>0]
  --version          Show the version and exit.
  -h, --help         Show this message and exit.

Commands:
  events    Show state transitions, exits, adoptions and readiness of TARGETS (default: all).
  logs      Print the output of TARGETS (default: all), each line after its instance.
  pid       Print supervisord's PID, or with TARGETS the PIDs of their processes.
  reexec    Re-execute supervisord in place (an upgrade); the workers keep running.
  reload    Re-read the config and apply it; waits until done (exit 7 if the config is invalid).
  restart   Stop TARGETS, start them again and wait until they are RUNNING.
  shutdown  Stop every worker, then supervisord itself; waits until the workers are gone.
  signal    Send SIGNAL (HUP, SIGUSR1, 15, ...) to the main process of each of TARGETS.
  start     Start TARGETS and wait until they are RUNNING (exit 5 if one cannot start).
  status    Show the state of TARGETS (default: all).
  stop      Stop TARGETS and wait until their processes are gone (exit 5 if one cannot be...
  tail      Print the end of TARGET's stdout and stderr logs (e.g. web:0).

  Exit codes:
      0  success
      1  error (the message says what failed)
      2  usage error (bad option, argument or request)
      3  no supervisord is running for this config
      4  no such worker or instance
      5  an instance went FATAL, could not start or could not stop
      6  no answer from supervisord in time
      7  the config is invalid (reload refused)
    130  interrupted (Ctrl-C); supervisord carries on with the request
"""


def complete(config: Path, line: str) -> Result:
    words = line.split(" ")
    return ctl(
        env={
            "_SUPERVISORCTL_COMPLETE": "bash_complete",
            "COMP_WORDS": f"supervisorctl -c {config} {line}",
            "COMP_CWORD": str(len(words) + 2),
        }
    )


def test_completion_asks_the_daemon(daemon: Fake) -> None:
    daemon.rec.replies["status"] = {
        "code": 0,
        "data": {"instances": [{"name": "web:0"}, {"name": "web:1"}, {"name": "db:0"}]},
    }
    result = complete(daemon.config, "start w")
    assert (result.exit_code, result.stdout) == (0, "plain,web\nplain,web:0\nplain,web:1\n")
    assert daemon.rec.requests == [{"cmd": "status", "targets": ["all"], "opts": {"json": True}}]


def test_completion_without_daemon_is_silent(run_dir: Path, tmp_path: Path) -> None:
    result = complete(tmp_path / "none.yaml", "stop ")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "\n", "")  # no candidates


def test_completion_reads_the_daemons_status_list(daemon: Fake) -> None:
    daemon.rec.replies["status"] = {
        "code": 0,
        "data": [{"name": "web:0", "worker": "web"}, {"name": "db:0", "worker": "db"}],
    }
    result = complete(daemon.config, "stop d")
    assert (result.exit_code, result.stdout) == (0, "plain,db\nplain,db:0\n")


@pytest.mark.parametrize(("verb", "instead"), [
    ("update", "'supervisorctl reload' here (it applies what changed in the config)"),
    ("avail", "'supervisorctl status' here (it lists every configured instance)"),
])
def test_supervisord_verbs_name_the_pyvisor_one(verb: str, instead: str) -> None:
    result = ctl(verb)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", (
        "Usage: supervisorctl [OPTIONS] COMMAND [ARGS]...\n"
        "Try 'supervisorctl --help' for help.\n\n"
        f"Error: No such command '{verb}'; supervisord's {verb} is {instead}.\n"))
