"""Config loading: every bad file gives exactly the message a user should see; good files give
the documented defaults, resolved paths and policies."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

from supervisor import paths
from supervisor.config import Config, ConfigError, json_schema, load_config
from supervisor.config.__main__ import main
from supervisor.core.types import Policy, RestartPolicy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages name the file as given: run in tmp_path and load "app.yaml"."""
    monkeypatch.chdir(tmp_path)


def write(text: str, name: str = "app.yaml") -> str:
    Path(name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return name


def load(text: str) -> Config:
    return load_config(write(text))


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(text))
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


MINIMAL = """
workers:
  web:
    command: [python3, -m, worker]
"""

BAD = [
    pytest.param("""
        worker:
          web: {command: x}
        """, ["app.yaml:1: worker: unknown key; did you mean 'workers'?",
              ], id="top-level-typo"),
    pytest.param("""
        supervisor:
          log_dri: logs
        workers: {}
        """, ["app.yaml:2: supervisor.log_dri: unknown key; did you mean 'log_dir'?"],
        id="supervisor-typo"),
    pytest.param("""
        workers:
          web:
            command: x
            numproc: 2
        """, ["app.yaml:4: workers.web.numproc: unknown key; did you mean 'numprocs'?"],
        id="worker-typo"),
    pytest.param("""
        workers:
          web:
            command: x
            backoff: {initail: 1}
        """, ["app.yaml:4: workers.web.backoff.initail: unknown key; did you mean 'initial'?"],
        id="backoff-typo"),
    pytest.param("""
        workers:
          web:
            command: x
            zzz: 1
        """, [("app.yaml:4: workers.web.zzz: unknown key; valid keys: command, numprocs, "
              "directory, environment, user, group, autostart, restart, exit_codes, backoff, "
              "start_retries, start_seconds, graceful_timeout, stop_signal, kill_timeout, "
              "crash_burst, crash_interval, heartbeat_timeout, stdout, stderr, umask, stop_mode, "
              "priority, "
              "depends_on")],
        id="unknown-key-no-suggestion"),
    pytest.param("""
        workers:
          web:
            command: x
            numprocs: two
            autostart: 3
            kill_timeout: [1]
            priority: 1.5
            backoff: 5
        """, ["app.yaml:4: workers.web.numprocs: must be an integer (got 'two')",
              "app.yaml:5: workers.web.autostart: must be true or false (got 3)",
              "app.yaml:6: workers.web.kill_timeout: must be a number (got a list)",
              "app.yaml:7: workers.web.priority: must be an integer (got 1.5)",
              "app.yaml:8: workers.web.backoff: must be a mapping (got 5)"], id="wrong-types"),
    pytest.param("""
        workers:
          web:
            numprocs: 2
        """, ["app.yaml:2: workers.web: missing required key 'command'"], id="missing-command"),
    pytest.param("""
        workers:
          web: {command: [], numprocs: 1}
          api: {command: "  "}
          db: {command: "echo 'oops"}
          x: {command: 5}
          y: {command: [ls, [a]]}
        """, [("app.yaml:2: workers.web.command: must name a program to run "
              "(got an empty command)"),
              ("app.yaml:3: workers.api.command: must name a program to run "
              "(got an empty command)"),
              ("app.yaml:4: workers.db.command: cannot split the command: no closing quotation "
              "(got \"echo 'oops\")"),
              "app.yaml:5: workers.x.command: must be a string or a list of strings (got 5)",
              "app.yaml:6: workers.y.command: every item must be a string (item 1 is a list)"],
        id="bad-commands"),
    pytest.param("""
        workers:
          web:
            command: x
          api:
            command: y
          web:
            command: z
        """, ["app.yaml:6: workers.web: duplicate key; first defined on line 2"],
        id="duplicate-worker"),
    pytest.param("""
        workers:
          web:
            command: x
            numprocs: 1
            numprocs: 2
        """, ["app.yaml:5: workers.web.numprocs: duplicate key; first defined on line 4"],
        id="duplicate-key"),
    pytest.param("""
        workers:
          web:
            command: x
            stop_signal: SIGFOO
        """, ["app.yaml:4: workers.web.stop_signal: unknown signal 'SIGFOO'; use one of "
              + ", ".join(s.name[3:] for s in signal.Signals)
              + " (with or without SIG) or a number from 1 to " + str(int(signal.SIGRTMAX))],
        id="bad-signal"),
    pytest.param("""
        workers:
          a: {command: x, stop_signal: 0}
          b: {command: x, stop_signal: true}
        """, ["app.yaml:2: workers.a.stop_signal: unknown signal 0; use one of "
              + ", ".join(s.name[3:] for s in signal.Signals)
              + " (with or without SIG) or a number from 1 to " + str(int(signal.SIGRTMAX)),
              "app.yaml:3: workers.b.stop_signal: must be a signal name or number (got true)"],
        id="bad-signal-number"),
    pytest.param("""
        workers:
          a: {command: x, restart: sometimes}
          b: {command: x, restart: on_failure}
          c: {command: x, restart: true}
        """, [("app.yaml:2: workers.a.restart: must be one of always, on-failure, never "
              "(got 'sometimes')"),
              ("app.yaml:3: workers.b.restart: must be one of always, on-failure, never "
              "(got 'on_failure'); did you mean 'on-failure'?"),
              ("app.yaml:4: workers.c.restart: must be one of always, on-failure, never "
              "(got true)")], id="bad-restart"),
    pytest.param("""
        workers:
          web:
            command: x
            numprocs: 0
        """, ["app.yaml:4: workers.web.numprocs: must be ≥ 1 (got 0)"], id="numprocs-0"),
    pytest.param("""
        workers:
          web:
            command: x
            graceful_timeout: -1
            start_seconds: -0.5
            heartbeat_timeout: 0
            backoff: {initial: 5, max: 1}
            kill_timeout: .inf
        """, ["app.yaml:4: workers.web.graceful_timeout: must be ≥ 0 (got -1)",
              "app.yaml:5: workers.web.start_seconds: must be ≥ 0 (got -0.5)",
              "app.yaml:6: workers.web.heartbeat_timeout: must be > 0 (got 0)",
              "app.yaml:7: workers.web.backoff: max (1) must be ≥ initial (5)",
              "app.yaml:8: workers.web.kill_timeout: must be a finite number (got inf)"],
        id="bad-durations"),
    pytest.param("""
        workers:
          web:
            command: x
            depends_on: [dbb, web2]
          db:
            command: y
        """, ["app.yaml:4: workers.web.depends_on[0]: unknown worker 'dbb'; did you mean 'db'?",
              ("app.yaml:4: workers.web.depends_on[1]: unknown worker 'web2'; "
              "did you mean 'web'?")],
        id="unknown-depends-on"),
    pytest.param("""
        workers:
          a: {command: x, depends_on: [b]}
          b: {command: x, depends_on: [c]}
          c: {command: x, depends_on: [a]}
          d: {command: x, depends_on: [d]}
        """, ["app.yaml:2: workers.a.depends_on: dependency cycle: a -> b -> c -> a",
              "app.yaml:5: workers.d.depends_on: dependency cycle: d -> d"], id="cycles"),
    pytest.param("""
        workers:
          "web 1": {command: x}
          -web: {command: x}
        """, [("app.yaml:2: workers.web 1: invalid worker name 'web 1': use 1-64 characters "
              "from A-Z a-z 0-9 _ . - (not starting with . or -)"),
              ("app.yaml:3: workers.-web: invalid worker name '-web': use 1-64 characters "
              "from A-Z a-z 0-9 _ . - (not starting with . or -)")], id="bad-names"),
    pytest.param("""
        workers:
          all: {command: x}
        """, ["app.yaml:2: workers.all: the worker name 'all' is reserved: `supervisorctl stop "
              "all` means every worker; choose another name"], id="reserved-name"),
    pytest.param("""
        workers:
          web:
            command: x
            user: no-such-user-pyvisor
            directory: no/such/dir
        """, [("app.yaml:4: workers.web.user: no such user on this machine "
              "(got 'no-such-user-pyvisor')"),
              "app.yaml:5: workers.web.directory: no such directory: {tmp}/no/such/dir"],
        id="unknown-user-and-directory"),
    pytest.param("""
        supervisor:
          socket_mode: 644
          block_prefix: a/b
          log_level: loud
        workers: {}
        """, ["app.yaml:2: supervisor.socket_mode: must be '0600' or '0660' (got '644')",
              ("app.yaml:3: supervisor.block_prefix: must be 1-128 characters from A-Z a-z "
              "0-9 _ - (not starting with -; no . or /) (got 'a/b')"),
              ("app.yaml:4: supervisor.log_level: must be one of TRACE, DEBUG, INFO, SUCCESS, "
              "WARNING, ERROR, CRITICAL (got 'loud')")], id="bad-supervisor-values"),
    pytest.param("""
        supervisor:
          socket_mode: "0660"
        workers: {}
        """, [("app.yaml:2: supervisor.socket_mode: '0660' needs socket_group "
              "(the group allowed to connect)")], id="0660-without-group"),
    pytest.param("""
        workers:
          web:
            command: x
            stdout: {path: "{log_dir}/{nme}.log", max_bytes: ten, backups: -1}
            stderr: stdot
        """, [("app.yaml:4: workers.web.stdout.path: unknown placeholder {nme}; use {name}, "
              "{index}, {instance}, {log_dir} (got '{log_dir}/{nme}.log')"),
              ("app.yaml:4: workers.web.stdout.max_bytes: must be a number of bytes or a size "
              "such as '10MB', '512KB', '1GiB' (got 'ten')"),
              "app.yaml:4: workers.web.stdout.backups: must be ≥ 0 (got -1)",
              ("app.yaml:5: workers.web.stderr: must be a mapping (path, max_bytes, backups), "
              "'stdout' or 'daemon', or null to discard it (got 'stdot'); did you mean "
              "'stdout'?")], id="bad-log-settings"),
    pytest.param("""
        workers:
          web:
            command: x
            numprocs: 2
            stdout: {path: "{log_dir}/web.log"}
          api:
            command: x
            stderr: {path: "logs/web-1.err.log"}
        """, [("app.yaml:5: workers.web.stdout.path: all 2 instances would write to "
              "{tmp}/logs/web.log; put {index} or {instance} in the path"),
              ("app.yaml:8: workers.api.stderr.path: api:0 stderr would write to the same file "
              "as web:1 stderr: {tmp}/logs/web-1.err.log")], id="shared-log-files"),
    pytest.param("""
        workers:
          web:
            command: x
            environment: {A: [1], "B=C": x}
            exit_codes: [0, 256]
        """, ["app.yaml:4: workers.web.environment.A: must be a string (got a list)",
              ("app.yaml:4: workers.web.environment.B=C: invalid environment variable name "
              "'B=C'"),
              ("app.yaml:5: workers.web.exit_codes: must be a list of exit codes from 0 to 255 "
              "(got 256)")], id="bad-environment-and-exit-codes"),
    pytest.param("""
        workers:
          web: null
          api: [command, x]
        """, ["app.yaml:2: workers.web: must be a mapping (got null)",
              "app.yaml:3: workers.api: must be a mapping (got a list)"], id="worker-not-mapping"),
    pytest.param("workers:\n  a: {command: x}\n b: 1\n",
                 [("app.yaml:3:2: invalid YAML: expected <block end>, but found "
                  "'<block mapping start>' (while parsing a block mapping started on line 1); "
                  "check the indentation")], id="yaml-indentation"),
    pytest.param("workers:\n  web: {command: [x}\n",
                 [("app.yaml:2:20: invalid YAML: expected ',' or ']', but got '}' "
                  "(while parsing a flow sequence started on line 2)")], id="yaml-syntax"),
    pytest.param("workers: {}\n---\nworkers: {}\n",
                 [("app.yaml:2:1: invalid YAML: expected a single document in the stream, "
                  "but found another document")], id="two-documents"),
    pytest.param("", [("app.yaml: the file is empty; a config needs at least a 'workers:' "
                      "mapping")], id="empty"),
    pytest.param("# nothing but a comment\n",
                 ["app.yaml: the file is empty; a config needs at least a 'workers:' mapping"],
                 id="only-comments"),
    pytest.param("- web\n", [("app.yaml:1: the top level must be a mapping with a 'workers:' "
                             "key (got a list)")], id="top-level-list"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_config_message(text: str, expected: list[str], tmp_path: Path) -> None:
    want = [line.replace("{tmp}", str(tmp_path)) for line in expected]
    assert errors(text) == want


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("nope.yaml")
    assert str(info.value) == "nope.yaml: cannot read the config file: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config("d.yaml")
    assert str(info.value) == "d.yaml: cannot read the config file: Is a directory"


def test_not_utf8() -> None:
    Path("app.yaml").write_bytes(b"workers: {}\n# \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config("app.yaml")
    assert str(info.value) == "app.yaml: not UTF-8 text (byte 0xff at offset 14)"


def test_defaults(tmp_path: Path) -> None:
    cfg = load(MINIMAL)
    path = str(tmp_path / "app.yaml")
    assert cfg.path == path
    assert cfg.directory == str(tmp_path)
    sup = cfg.supervisor
    assert sup.socket == paths.default_socket_path(path)
    assert sup.block_prefix == paths.default_block_prefix(path)
    assert (sup.socket_mode, sup.socket_group) == (0o600, None)
    assert sup.log_dir == str(tmp_path / "logs")
    assert (sup.log_level, sup.shutdown_timeout) == ("INFO", None)
    web = cfg.workers["web"]
    assert web.command == ("python3", "-m", "worker")
    assert web.directory == str(tmp_path)
    assert (web.numprocs, web.autostart, web.priority, web.depends_on) == (1, True, 999, ())
    assert (web.environment, web.user, web.heartbeat_timeout) == ({}, None, None)
    assert web.log_config("stdout").max_bytes == 10 * 1024 * 1024
    assert web.log_config("stdout").backups == 5
    assert web.log_paths("web", 0) == (str(tmp_path / "logs/web-0.out.log"),
                                       str(tmp_path / "logs/web-0.err.log"))
    assert web.policy("web") == Policy(name="web")
    assert web.instances("web") == ["web:0"]


def test_workers_with_equal_log_and_backoff_settings_share_them_and_others_keep_theirs() -> None:
    """Equal stdout, stderr and backoff settings are one frozen object for all the workers
    that have them (10,000 workers of one instance each hold one copy); a worker that sets
    its own keeps exactly what it set."""
    cfg = load("""
workers:
  a: {command: [sleep, '1']}
  b: {command: [sleep, '1'], stdout: {max_bytes: 10MB}}
  c: {command: [sleep, '1'], stdout: {max_bytes: 1KB, backups: 2}, backoff: {initial: 2, max: 4}}
  d: {command: [sleep, '1'], stderr: {path: 'd.err'}}
""")
    a, b, c, d = (cfg.workers[n] for n in "abcd")
    assert a.stdout is b.stdout and a.stderr is b.stderr is c.stderr
    assert a.backoff is b.backoff is d.backoff
    assert (c.log_config("stdout").max_bytes, c.log_config("stdout").backups) == (1024, 2)
    assert (c.backoff.initial, c.backoff.max, a.backoff.initial) == (2, 4, 0.1)
    assert d.stdout is a.stdout and str(d.log_paths("d", 0)[1]).endswith("/d.err")
    assert str(a.log_paths("a", 0)[1]).endswith("/logs/a-0.err.log")


def test_policy_mapping() -> None:
    cfg = load("""
        workers:
          web:
            command: x
            restart: always
            exit_codes: [0, 3]
            backoff: {initial: 1, factor: 3, max: 60}
            start_retries: 2
            start_seconds: 0.5
            graceful_timeout: 20
            stop_signal: SIGINT
            kill_timeout: 7
        """)
    assert cfg.workers["web"].policy("web") == Policy(
        name="web", restart=RestartPolicy.ALWAYS, success_codes=frozenset({0, 3}),
        backoff_initial=1.0, backoff_factor=3.0, backoff_max=60.0, start_retries=2,
        start_seconds=0.5, graceful_timeout=20.0, stop_signal=int(signal.SIGINT),
        kill_timeout=7.0, kill_signal=9)


@pytest.mark.parametrize(("value", "signum"), [
    ("TERM", 15), ("SIGTERM", 15), ("term", 15), (15, 15), ("'15'", 15), ("HUP", 1),
    ("USR2", int(signal.SIGUSR2)), ("KILL", 9), ("IOT", int(signal.SIGABRT)), ("40", 40)])
def test_signal_spellings(value: object, signum: int) -> None:
    cfg = load(f"workers: {{web: {{command: x, stop_signal: {value}}}}}\n")
    assert cfg.workers["web"].stop_signal == signum


@pytest.mark.parametrize(("value", "size"), [
    ("0", 0), ("1234", 1234), ("10MB", 10 << 20), ("512KB", 512 << 10), ("1GiB", 1 << 30),
    ("1.5 G", 3 << 29), ("100b", 100), ("2m", 2 << 20), ("'7'", 7)])
def test_max_bytes(value: str, size: int) -> None:
    cfg = load(f"workers: {{web: {{command: x, stdout: {{max_bytes: {value}}}}}}}\n")
    assert cfg.workers["web"].log_config("stdout").max_bytes == size


def test_string_command_is_split_like_a_shell() -> None:
    cfg = load("""
        workers:
          web:
            command: sh -c 'while true; do date; sleep 5; done' "two words" a\\ b
        """)
    assert cfg.workers["web"].command == (
        "sh", "-c", "while true; do date; sleep 5; done", "two words", "a b")


@pytest.mark.parametrize("seed", range(4))
def test_a_command_without_quotes_is_split_as_shlex_splits_it(seed: int) -> None:
    """Such commands take a shortcut past shlex: the same words for every whitespace, unicode
    space and shell character it may hold."""
    import random
    import shlex

    from supervisor.config.values import command
    chars = " \t\r\nab=#;|&$()*~\x0b\x0c\x1c\x85\xa0\u2028\u3000é"
    rng = random.Random(seed)
    for _ in range(5000):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(1, 16)))
        if shlex.split(text):
            assert command(text) == tuple(shlex.split(text)), repr(text)


def test_scalars_are_taken_as_written() -> None:
    cfg = load("""
        workers:
          web:
            command: [sleep, 3600, yes, 1.10, null]
            environment: {A: yes, B: 1.10, C: , D: "q", E: 0x1F, F: off}
        """)
    web = cfg.workers["web"]
    assert web.command == ("sleep", "3600", "yes", "1.10", "null")
    assert web.environment == {"A": "yes", "B": "1.10", "C": "", "D": "q", "E": "0x1F",
                               "F": "off"}


def test_relative_paths_are_resolved_against_the_config_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "etc"
    (sub / "app").mkdir(parents=True)
    write("""
        supervisor:
          socket: run/app.sock
          log_dir: ../var/log
        workers:
          web:
            command: x
            numprocs: 2
            directory: app
            stdout: {path: "{log_dir}/{instance}.log"}
            stderr: {path: "err/{name}.{index}.log"}
          one:
            command: x
            stderr: stdout
            stdout: {path: /abs/one.log}
        """, name=str(sub / "app.yaml"))
    monkeypatch.chdir("/")
    cfg = load_config(str(sub / "app.yaml"))
    assert cfg.supervisor.socket == str(sub / "run/app.sock")
    assert cfg.supervisor.log_dir == str(tmp_path / "var/log")
    web = cfg.workers["web"]
    assert web.directory == str(sub / "app")
    assert web.log_paths("web", 1) == (str(tmp_path / "var/log/web:1.log"),
                                       str(sub / "err/web.1.log"))
    assert cfg.workers["one"].log_paths("one", 0) == ("/abs/one.log", "/abs/one.log")
    assert cfg.workers["one"].log_config("stderr") == cfg.workers["one"].stdout


def test_supervisor_section() -> None:
    cfg = load("""
        supervisor:
          socket_group: root
          block_prefix: my-app
          log_level: debug
          shutdown_timeout: 30
        workers: {}
        """)
    sup = cfg.supervisor
    assert (sup.socket_group, sup.socket_mode) == ("root", 0o660)   # 0660 follows the group
    assert (sup.block_prefix, sup.log_level, sup.shutdown_timeout) == ("my-app", "DEBUG", 30.0)
    assert cfg.workers == {}


@pytest.mark.parametrize("text", ["0600", "600", '"0600"', "0o600", "384"])
def test_socket_mode_is_octal_text(text: str) -> None:
    if text == "384":
        assert errors(f"supervisor: {{socket_mode: {text}}}\nworkers: {{}}\n") == [
            "app.yaml:1: supervisor.socket_mode: must be '0600' or '0660' (got '384')"]
    else:
        cfg = load(f"supervisor: {{socket_mode: {text}}}\nworkers: {{}}\n")
        assert cfg.supervisor.socket_mode == 0o600


def test_user_by_name_or_uid() -> None:
    cfg = load("workers: {a: {command: x, user: root}, b: {command: x, user: 0}}\n")
    assert cfg.workers["a"].user == cfg.workers["b"].user == "root"


def test_start_order_depends_on_then_priority() -> None:
    cfg = load("""
        workers:
          web: {command: x, depends_on: [db, cache], priority: 1}
          db: {command: x, priority: 50}
          cache: {command: x, priority: 10}
          metrics: {command: x, priority: 5}
          zzz: {command: x}
          aaa: {command: x}
        """)
    assert cfg.start_order() == ["metrics", "cache", "db", "web", "aaa", "zzz"]
    assert cfg.instances()[:4] == ["metrics:0", "cache:0", "db:0", "web:0"]


def test_anchors_merge_keys_and_x_keys() -> None:
    cfg = load("""
        x-defaults: &defaults
          graceful_timeout: 3
          stop_signal: INT
        workers:
          a:
            <<: *defaults
            command: x
            stop_signal: QUIT
        """)
    a = cfg.workers["a"]
    assert (a.graceful_timeout, a.stop_signal) == (3.0, int(signal.SIGQUIT))


def test_equality_detects_changed_workers() -> None:
    one = load(MINIMAL + "  api: {command: y}\n")
    two = load(MINIMAL + "  api: {command: y, numprocs: 2}\n")
    assert one.workers["web"] == two.workers["web"]
    assert one.workers["api"] != two.workers["api"]
    moved = load(MINIMAL.replace("workers:", "supervisor: {log_dir: other}\nworkers:"))
    assert moved.workers["web"] != one.workers["web"], "a new log_dir changes log paths"


def test_example_config_loads() -> None:
    cfg = load_config(str(REPO / "configs/example.yaml"))
    assert cfg.start_order() == ["clock", "demo"]
    assert cfg.instances() == ["clock:0", "demo:0", "demo:1"]
    assert cfg.workers["demo"].heartbeat_timeout == 5.0
    assert cfg.supervisor.log_dir == str(REPO / "configs/logs")
    first = (REPO / "configs/example.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=pyvisor.schema.json"


def test_schema_file_is_up_to_date() -> None:
    committed = json.loads((REPO / "configs/pyvisor.schema.json").read_text())
    assert committed == json_schema(), (
        "configs/pyvisor.schema.json is out of date; regenerate it with: "
        ".venv/bin/python -m supervisor.config --schema > configs/pyvisor.schema.json")


def test_main_checks_files(capsys: pytest.CaptureFixture[str]) -> None:
    write(MINIMAL)
    write("workers: {web: {}}\n", name="bad.yaml")
    assert main(["app.yaml", "bad.yaml"]) == 1
    out, err = capsys.readouterr()
    assert out == "app.yaml: OK (1 worker, 1 instance)\n"
    assert err == "bad.yaml:1: workers.web: missing required key 'command'\n"
    assert os.path.exists("app.yaml")


@pytest.mark.parametrize("prefix", ["my.app", "-app", "a" * 129])
def test_block_prefix_follows_the_block_modules_rule(prefix: str) -> None:
    # a dotted prefix "my" would match another daemon's "my.app.*" blocks at adoption, and
    # shm_name() refuses it: the config must refuse it first, not every spawn later
    from worker import block

    assert not block.valid_prefix(prefix)
    assert errors(f"supervisor: {{block_prefix: '{prefix}'}}\nworkers: {{}}\n") == [
        f"app.yaml:1: supervisor.block_prefix: must be {block.PREFIX_RULE} (got {prefix!r})"]


def test_supervisord_option_names_get_the_pyvisor_key() -> None:
    """Not the nearest spelling (stopwaitsecs is not start_seconds, autorestart not
    autostart): the key that means the same, from the table the converter uses."""
    assert errors("""
        programs: {}
        supervisor:
          childlogdir: /tmp
          nodaemon: true
        workers:
          web:
            command: sleep 100
            stopwaitsecs: 10
            autorestart: true
            redirect_stderr: true
            stdout_logfile_maxbytes: 0
            startsecs: 3
            stopasgroup: true
            numproc: 2
        """) == [
        "app.yaml:1: programs: unknown key; did you mean 'workers'?",
        "app.yaml:3: supervisor.childlogdir: unknown key; did you mean 'log_dir'? "
        "(supervisord's childlogdir)",
        "app.yaml:4: supervisor.nodaemon: unknown key (supervisord's nodaemon); pyvisor always "
        "runs in the foreground; remove it",
        "app.yaml:8: workers.web.stopwaitsecs: unknown key; did you mean 'kill_timeout'? "
        "(supervisord's stopwaitsecs)",
        "app.yaml:9: workers.web.autorestart: unknown key; did you mean 'restart'? "
        "(supervisord's autorestart)",
        "app.yaml:10: workers.web.redirect_stderr: unknown key; did you mean 'stderr: stdout'? "
        "(supervisord's redirect_stderr)",
        "app.yaml:11: workers.web.stdout_logfile_maxbytes: unknown key; did you mean "
        "'stdout.max_bytes'? (supervisord's stdout_logfile_maxbytes)",
        "app.yaml:12: workers.web.startsecs: unknown key; did you mean 'start_seconds'? "
        "(supervisord's startsecs)",
        "app.yaml:13: workers.web.stopasgroup: unknown key (supervisord's stopasgroup); pyvisor "
        "always signals the whole process group; remove it",
        "app.yaml:14: workers.web.numproc: unknown key; did you mean 'numprocs'?"]


def test_placeholders_in_command_and_environment() -> None:
    cfg = load("""
        workers:
          w:
            command: [sh, -c, 'echo {index} {{index}} ${HOME} {nope} {name}']
            numprocs: 2
            environment: {PORT: "80{index}", I: "{instance}", L: "{{instance}}"}
        """).workers["w"]
    assert cfg.argv("w", 1) == ["sh", "-c", "echo 1 {index} ${HOME} {nope} w"]
    assert cfg.env("w", 1) == {"PORT": "801", "I": "w:1", "L": "{instance}"}
    assert cfg.command[2] == "echo {index} {{index}} ${HOME} {nope} {name}"


@pytest.mark.parametrize(("text", "mask"), [
    ("'022'", 0o22), ("'0o027'", 0o27), ("'77'", 0o77), ("022", 0o22), ("0777", 0o777),
    ("null", None)])
def test_umask_is_octal_text(text: str, mask: int | None) -> None:
    assert load(f"workers: {{w: {{command: x, umask: {text}}}}}\n").workers["w"].umask == mask


@pytest.mark.parametrize("text", ["'0999'", "'1000'", "true", "'-1'", "'0o'", "[1]", "'7777'"])
def test_umask_refused(text: str) -> None:
    found = errors(f"workers: {{w: {{command: x, umask: {text}}}}}\n")
    assert len(found) == 1 and found[0].startswith("app.yaml:1: workers.w.umask: must be"), found
