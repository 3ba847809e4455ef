"""The config is a trust boundary: every file gives a Config or a ConfigError (never a traceback,
a hang or gigabytes), and every value a Config holds is one the daemon can carry out. Each test
here is an attack that once got through (``--check`` accepted it and the daemon then crashed or
hung, or ``--check`` itself died)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import ConfigError, load_config
from supervisor.core import InstanceState, SpawnFailed, State
from supervisor.core.machine import step
from supervisor.core.rules import backoff_delay
from supervisor.core.types import Policy
from tests.e2e.conftest import daemon, daemon_factory  # noqa: F401  (fixtures)
from worker.block import U64_MAX, deadline_ns

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write(text: str, name: str = "app.yaml") -> str:
    Path(name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return name


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(text))
    return info.value.errors


def worker(extra: str) -> str:
    return "workers:\n  a:\n    command: sleep 1\n" + textwrap.indent(
        textwrap.dedent(extra).strip("\n"), "    ") + "\n"


# -- numbers the daemon could not carry out ------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    ("graceful_timeout: 1.0e+20", "app.yaml:4: workers.a.graceful_timeout: must be ≤ 86400"),
    ("kill_timeout: 86401", "app.yaml:4: workers.a.kill_timeout: must be ≤ 86400"),
    ("start_seconds: 1.0e+300", "app.yaml:4: workers.a.start_seconds: must be ≤ 86400"),
    ("heartbeat_timeout: 1.0e+10", "app.yaml:4: workers.a.heartbeat_timeout: must be ≤ 86400"),
    ("backoff: {factor: 1.0e+200}", "app.yaml:4: workers.a.backoff.factor: must be ≤ 100"),
    ("backoff: {initial: 1, max: 1.0e+9}", "app.yaml:4: workers.a.backoff.max: must be ≤ 86400"),
    ("start_retries: 1000001", "app.yaml:4: workers.a.start_retries: must be ≤ 1000000"),
    ("numprocs: 10000000", "app.yaml:4: workers.a.numprocs: must be ≤ 10000 (got 10000000)"),
    ("stdout: {backups: 100000000}", "app.yaml:4: workers.a.stdout.backups: must be ≤ 1000"),
    ("stdout: {max_bytes: 2TB}", "app.yaml:4: workers.a.stdout.max_bytes: must be at most 1TiB"),
    ("stdout: {max_bytes: '" + "9" * 50 + "T'}", "app.yaml:4: workers.a.stdout.max_bytes: must "
                                                 "be at most 1TiB"),
    ("stdout: {max_bytes: '" + "9" * 400 + "T'}", "app.yaml:4: workers.a.stdout.max_bytes: must "
                                                  "be a number of bytes"),
    ("priority: 10000000000", "app.yaml:4: workers.a.priority: must be ≤ 1000000"),
    ("exit_codes: [256]", "app.yaml:4: workers.a.exit_codes: must be a list of exit codes from "
                          "0 to 255 (got 256)"),
    ("stop_signal: '" + "9" * 5000 + "'", "app.yaml:4: workers.a.stop_signal: unknown signal"),
])
def test_numbers_past_their_bound_are_refused(extra: str, message: str) -> None:
    errs = errors(worker(extra))
    assert len(errs) == 1 and errs[0].startswith(message), errs


def test_shutdown_timeout_bound() -> None:
    errs = errors("supervisor:\n  shutdown_timeout: 1.0e+20\n" + worker(""))
    assert errs[0].startswith("app.yaml:2: supervisor.shutdown_timeout: must be ≤ 86400"), errs


def test_the_largest_values_are_accepted() -> None:
    config = load_config(write(worker("""
        numprocs: 10000
        start_retries: 1000000
        graceful_timeout: 86400
        backoff: {initial: 86400, factor: 100, max: 86400}
        stdout: {path: "{name}-{index}.log", max_bytes: 1TiB, backups: 1000}
        priority: -1000000
    """)))
    assert config.workers["a"].numprocs == 10000


def test_instances_in_all_are_bounded() -> None:
    text = "workers:\n" + "".join(
        f"  w{i}:\n    command: sleep 1\n    numprocs: 10000\n" for i in range(11))
    errs = errors(text)
    assert errs == ["app.yaml:1: workers: 110,000 instances in all; the limit is 100,000"], errs


# -- the core and the runtime never overflow, whatever they are given -------------------------

@pytest.mark.parametrize(("factor", "n"), [(2.0, 1024), (2.0, 10**6), (1e200, 2), (100.0, 10**6)])
def test_backoff_never_overflows(factor: float, n: int) -> None:
    assert backoff_delay(Policy(backoff_factor=factor, backoff_max=30.0), n) == 30.0


def test_backoff_values() -> None:
    policy = Policy(backoff_initial=0.5, backoff_factor=2.0, backoff_max=30.0)
    assert [backoff_delay(policy, n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(Policy(backoff_initial=0.0, backoff_factor=1e200), 5) == 0.0
    assert backoff_delay(Policy(backoff_initial=5.0, backoff_max=1.0), 3) == 1.0


def test_failed_start_after_1025_retries_backs_off_at_max() -> None:
    policy = Policy(start_retries=1_000_000, backoff_max=30.0)
    inst = InstanceState(state=State.STARTING, retries=1500, attempts_since=0.0)
    new, _ = step(inst, SpawnFailed(now=1.0, error="boom"), policy)
    assert (new.state, new.retries, new.backoff) == (State.BACKOFF, 1501, 30.0)


@pytest.mark.parametrize(("deadline", "ns"), [
    (1.5, 1_500_000_000), (0.0, 0), (-3.0, 0), (1e20, U64_MAX), (float("inf"), U64_MAX),
    (float("nan"), U64_MAX), (18446744073.709553, U64_MAX)])
def test_stop_deadline_fits_u64(deadline: float, ns: int) -> None:
    assert deadline_ns(deadline) == ns


# -- strings exec, open and the environment cannot take ----------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    ("", None),
    ('environment: {A: "x\\0y"}', "app.yaml:4: workers.a.environment.A: contains a NUL"),
    ('environment: {"A\\0": y}', "app.yaml:4: workers.a.environment: the key 'A\\x00' "
                                 "contains a NUL character (\\0)"),
    ('environment: {"A\\nB": y}', "app.yaml:4: workers.a.environment.A\nB: invalid environment "
                                  "variable name 'A\\nB'"),
    ('directory: "/tmp\\0"', "app.yaml:4: workers.a.directory: contains a NUL"),
    ('user: "root\\0"', "app.yaml:4: workers.a.user: contains a NUL"),
    ('stdout: {path: "x\\0.log"}', "app.yaml:4: workers.a.stdout.path: contains a NUL"),
    ('stderr: {path: "x\\0.log"}', "app.yaml:4: workers.a.stderr.path: contains a NUL"),
])
def test_nul_in_any_string_is_refused(extra: str, message: str | None) -> None:
    if message is None:       # the command itself
        errs = errors('workers:\n  a:\n    command: "sleep\\0 1"\n')
        assert errs == ["app.yaml:3: workers.a.command: contains a NUL character (\\0), which "
                        "no path, command, name or environment value can hold"], errs
        errs = errors('workers:\n  a:\n    command: [sleep, "1\\0"]\n')
        assert errs[0].startswith("app.yaml:3: workers.a.command[1]: contains a NUL"), errs
        return
    errs = errors(worker(extra))
    assert len(errs) == 1 and errs[0].startswith(message), errs


@pytest.mark.parametrize("key", ["socket", "log_dir", "block_prefix"])
def test_nul_in_supervisor_strings_is_refused(key: str) -> None:
    errs = errors(f'supervisor:\n  {key}: "x\\0"\n' + worker(""))
    assert errs[0].startswith(f"app.yaml:2: supervisor.{key}: contains a NUL"), errs


def test_nul_refused_in_models_made_in_python() -> None:
    from pydantic import ValidationError

    from supervisor.config import WorkerConfig
    for kw in ({"command": ["a\0"]}, {"command": "a", "environment": {"A": "b\0"}},
               {"command": "a", "stdout": {"path": "x\0"}}):
        with pytest.raises(ValidationError, match="NUL"):
            WorkerConfig(**kw)


def test_overlong_command_string_is_refused() -> None:
    errs = errors(worker("") .replace("sleep 1", "x" * 40000))
    assert errs[0].startswith("app.yaml:3: workers.a.command: a command string of 40,000 "
                              "characters is too long"), errs


# -- YAML that is not data ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("workers:\n  a:\n    command: !!python/object:os.system x\n",
     "app.yaml:3: workers.a.command: unsupported YAML tag '!!python/object:os.system'; use "
     "plain strings, numbers, true/false, null, lists and mappings"),
    ("workers: !!python/object/apply:os.system {}\n",
     "app.yaml:1: workers: unsupported YAML tag '!!python/object/apply:os.system'"),
    ("workers: !!set {a: null}\n", "app.yaml:1: workers: unsupported YAML tag '!!set'"),
    ("workers:\n  a: !local {command: x}\n", "app.yaml:2: workers.a: unsupported YAML tag "
                                             "'!local'"),
    ("workers:\n  a:\n    command: x\n    numprocs: !!int zz\n",
     "app.yaml:4: workers.a.numprocs: 'zz' is not a valid !!int"),
    ("workers:\n  a:\n    command: x\n    autostart: !!bool maybe\n",
     "app.yaml:4: workers.a.autostart: 'maybe' is not a valid !!bool"),
    ("workers:\n  a:\n    command: x\n    numprocs: " + "9" * 5000 + "\n",
     "app.yaml:4: workers.a.numprocs: integer of 5,000 characters; no setting takes a number "
     "that large"),
    ("workers:\n  a:\n    command: x\n    numprocs: 0x" + "f" * 5000 + "\n",
     "app.yaml:4: workers.a.numprocs: integer of 5,002 characters"),
    ("workers:\n  a:\n    command: x\n    numprocs: 1" + ":5" * 5000 + "\n",
     "app.yaml:4: workers.a.numprocs: integer of 10,001 characters"),
    ("workers: &w\n  a: *w\n", "app.yaml:1: workers.a: recursive alias: this value contains "
                               "itself"),
    ("x-d: &d\n  <<: *d\nworkers: {}\n", "app.yaml:1: x-d.<<: recursive alias"),
    ("workers: " + "[" * 100 + "]" * 100 + "\n",
     "app.yaml:1:73: invalid YAML: nesting deeper than 64 levels"),
    ("a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 100))
     + "workers: {}\n", "nesting deeper than 64 levels (through aliases)"),
])
def test_yaml_that_is_not_plain_data(text: str, message: str) -> None:
    errs = errors(text)
    assert any(message in e for e in errs) and errs[0].startswith("app.yaml"), errs


def test_billion_laughs_is_refused_fast_and_small() -> None:
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(lines) + "\nworkers: {}\n"
    assert len(text) < 500
    start = time.perf_counter()
    errs = errors(text)
    assert time.perf_counter() - start < 1.0
    assert errs == ["app.yaml:6: f: has more than 500,000 values (an alias counts as many as it "
                    "stands for); a config needs far fewer"], errs


def test_file_size_is_bounded() -> None:
    errs = errors("workers: {}\n" + "#" * (16 << 20))
    assert errs == ["app.yaml: the file is larger than 16 MiB; a config is never that large"]


def test_a_config_of_thousands_of_distinct_workers_over_a_megabyte_loads() -> None:
    # what --convert makes of a supervisord.conf of many [program:x] sections
    text = "workers:\n" + "".join(
        f"  app-{i}:\n    command: [sleep, '100']\n    directory: /tmp\n"
        f"    environment: {{APP_ENV: production, APP_INDEX: '{i}'}}\n"
        f"    stdout: {{path: /tmp/app-{i}.log, max_bytes: 10MB, backups: 3}}\n"
        for i in range(6000))
    assert len(text) > 1 << 20
    assert len(load_config(write(text)).workers) == 6000


def test_the_parsed_tree_is_bounded_while_composing(monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.config import yamlfile

    monkeypatch.setattr(yamlfile, "MAX_NODES", 1000)
    errs = errors("workers: {}\nx: [" + ",".join(["a"] * 2000) + "]\n")
    assert errs == ["app.yaml:2:1995: invalid YAML: more than 1,000 keys and values; a config "
                    "needs far fewer"], errs


def test_a_large_file_s_syntax_error_is_worded_by_libyaml_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """PyYAML's own parser words errors better but takes ~3 s a megabyte: never on a large
    file (a reload would stall the daemon for a minute on 16 MiB)."""
    from supervisor.config import yamlfile

    if yamlfile._CLoader is None:
        pytest.skip("PyYAML without libyaml")
    used: list[int] = []

    class Counting(yamlfile._Loader):
        def __init__(self, stream: str) -> None:
            used.append(len(stream))
            super().__init__(stream)

    monkeypatch.setattr(yamlfile, "_Loader", Counting)
    assert errors("workers: {}\n]\n")[0].startswith("app.yaml:2:1: invalid YAML")
    assert used, "a small file's error is worded by PyYAML's parser"
    used.clear()
    big = "workers: {}\n" + "".join(f"x{i}: 1\n" for i in range(200_000)) + "]\n"
    assert len(big) > yamlfile.PYTHON_PARSER_CHARS
    assert errors(big)[0].startswith("app.yaml:200002:1: invalid YAML")
    assert not used


def test_thousands_of_problems_are_named_up_to_a_bound() -> None:
    from supervisor.config.errors import MAX_SHOWN

    errs = errors("workers:\n" + "".join(f"  a{i}:\n    command: sleep 1\n    numproc: 2\n"
                                         for i in range(MAX_SHOWN + 50)))
    assert len(errs) == MAX_SHOWN + 1
    assert errs[0].startswith("app.yaml:4: workers.a0.numproc: unknown key")
    assert errs[-1] == "... and 50 more problems; fix these and check the file again"



def test_a_file_of_many_unknown_keys_is_refused_in_seconds() -> None:
    """One worker with 30,000 unknown keys (0.4 MB; 16 MiB hold 300,000): each problem was
    looked for among those before it (quadratic) and got a difflib suggestion, 25 s here at
    30,000 and some 40 minutes at 300,000 (a reload, --check and a start all waited)."""
    text = "workers:\n  w:\n    command: sleep 1\n" + "".join(
        f"    k{i}: v\n" for i in range(30_000))
    start = time.monotonic()
    errs = errors(text)
    took = time.monotonic() - start
    assert errs[0].startswith("app.yaml:4: workers.w.k0: unknown key; valid keys: command"), errs[0]
    assert errs[-1] == "... and 29,900 more problems; fix these and check the file again"
    assert took < 5, f"{took:.1f} s"


def test_many_unknown_workers_in_depends_on_are_refused_in_seconds() -> None:
    """1,500 workers naming 10 missing ones each (0.2 MB): every problem searched all the
    names with difflib and listed them all, sorted: 25 s and 150 MB here (10,000 workers:
    hours, and gigabytes of error lines); a line names at most MAX_KNOWN."""
    from supervisor.config.errors import MAX_KNOWN

    def deps(i: int) -> str:
        return ", ".join(f"zz{i}q{j}" for j in range(10))

    text = "workers:\n" + "".join(f"  w{i}:\n    command: sleep 1\n    depends_on: [{deps(i)}]\n"
                                   for i in range(1_500))
    start = time.monotonic()
    errs = errors(text)
    took = time.monotonic() - start
    assert errs[0].startswith("app.yaml:4: workers.w0.depends_on[0]: unknown worker 'zz0q0'; "
                              "known: w0, w1, w10, "), errs[0]
    assert errs[0].endswith(", ... (1,500 in all)") and errs[0].count(", w") == MAX_KNOWN - 1
    assert errs[-1] == "... and 14,900 more problems; fix these and check the file again"
    assert took < 5, f"{took:.1f} s"


def test_a_long_chain_of_depends_on_loads_and_dense_cycles_are_bounded() -> None:
    """The cycle check recursed once per worker of a chain: 3,000 workers each depending on
    the next (150 KB, a valid config) were refused, 'RecursionError'; and 300 workers that
    depend on each other made 44,850 cycles of up to 300 names (8 s, 1 GB at 700 workers:
    4.8 GB)."""
    n = 3_000
    chain = "workers:\n" + "".join(
        f"  w{i}:\n    command: sleep 1\n    depends_on: [{f'w{i + 1}' if i + 1 < n else ''}]\n"
        for i in range(n))
    config = load_config(write(chain))
    assert config.start_order()[:2] == ["w2999", "w2998"]
    m = 300
    def others(i: int) -> str:
        return ", ".join(f"w{j}" for j in range(m) if j != i)

    dense = "workers:\n" + "".join(f"  w{i}:\n    command: sleep 1\n    depends_on: [{others(i)}]\n"
                                    for i in range(m))
    start = time.monotonic()
    errs = errors(dense)
    took = time.monotonic() - start
    assert errs[0] == "app.yaml:4: workers.w0.depends_on: dependency cycle: w0 -> w1 -> w0", errs
    assert len(errs) == 100 and took < 5, (len(errs), took)

def test_load_config_turns_any_failure_into_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.config import load as load_module

    def boom(_text: str) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(load_module, "parse", boom)
    errs = errors(worker(""))
    assert errs == ["app.yaml: cannot load the config: RecursionError: maximum recursion depth "
                    "exceeded"], errs


# -- log files ---------------------------------------------------------------------------------

def test_log_path_equal_to_the_config_file_is_refused(tmp_path: Path) -> None:
    errs = errors(worker(f"stdout: {{path: {tmp_path}/app.yaml}}"))
    assert errs == [f"app.yaml:4: workers.a.stdout.path: would write to the config file itself: "
                    f"{tmp_path}/app.yaml"], errs
    errs = errors(worker("stderr: {path: 'logs/../app.yaml'}"))
    assert errs == [f"app.yaml:4: workers.a.stderr.path: would write to the config file itself: "
                    f"{tmp_path}/app.yaml"], errs


def test_log_path_template_matching_the_config_file(tmp_path: Path) -> None:
    text = worker("numprocs: 3\nstderr: {path: 'app{index}.yaml'}")
    with pytest.raises(ConfigError) as info:
        load_config(write(text, "app2.yaml"))
    assert info.value.errors == [
        f"app2.yaml:5: workers.a.stderr.path: would write to the config file itself: "
        f"{tmp_path}/app2.yaml"]
    load_config(write(text, "app3.yaml"))          # instances 0, 1, 2 only
    load_config(write(text, "app02.yaml"))         # {index} is never written 02


def test_log_path_equal_to_another_workers_file_is_refused() -> None:
    errs = errors("workers:\n  a:\n    command: x\n    stdout: {path: shared.log}\n"
                  "  b:\n    command: x\n    stderr: {path: shared.log}\n")
    assert len(errs) == 1 and errs[0].startswith(
        "app.yaml:7: workers.b.stderr.path: b:0 stderr would write to the same file as a:0 "
        "stdout: "), errs


def test_numprocs_10000_checks_fast() -> None:
    text = worker("numprocs: 10000")
    start = time.perf_counter()
    config = load_config(write(text))
    took = time.perf_counter() - start
    assert config.workers["a"].numprocs == 10000
    assert took < 0.5, f"load_config took {took:.3f} s"
    errs = errors(worker("numprocs: 10000\nstdout: {path: one.log}"))
    assert len(errs) == 1 and "all 10000 instances would write to" in errs[0], errs


def test_supervisord_check_never_tracebacks(tmp_path: Path) -> None:
    files = {
        "tag.yaml": "workers:\n  a:\n    command: !!python/object:os.system x\n",
        "alias.yaml": "workers: &w\n  a: *w\n",
        "int.yaml": "workers:\n  a:\n    command: x\n    numprocs: " + "9" * 5000 + "\n",
        "nul.yaml": 'workers:\n  a:\n    command: "sleep\\0 1"\n',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        r = subprocess.run([sys.executable, "-m", "supervisor.daemon", "-c", name, "--check"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (name, r.stderr)
        assert r.stderr.startswith(f"{name}:"), (name, r.stderr)


# -- the running daemon ------------------------------------------------------------------------

QUICK = {"start_seconds": 0.2, "graceful_timeout": 0.5, "kill_timeout": 0.5}


def test_sighup_with_an_unloadable_file_keeps_the_old_config(daemon: Any) -> None:  # noqa: F811
    d = daemon({"a": {"command": "sleep 1000", **QUICK}})
    d.wait_state("a:0", "RUNNING")
    before = d.pids()
    good = d.config_path.read_text()
    for bad, why in [(good + "x-bad: !!python/object:os.system x\n", "unsupported YAML tag"),
                     (good + "x-loop: &l\n  a: *l\n", "recursive alias")]:
        d.write_config({}, raw=bad)
        mark = d.log_mark()
        d.kill(signal.SIGHUP)
        d.wait_log(r"reload refused, still running the previous config:", after=mark)
        d.wait_log(why, after=mark)
        assert d.proc is not None and d.proc.poll() is None, "the daemon died"
        assert d.pids() == before
        r = d.ctl("reload")
        assert r.returncode == 7 and why in r.stderr, r
    d.write_config({}, raw=good)
    r = d.ctl("reload")
    assert (r.returncode, r.stdout) == (0, "no changes\n"), r


def test_reload_refuses_whatever_load_config_raises() -> None:
    """load_config raises only ConfigError; should a bug let anything else out, reload still
    refuses (code 7) and the daemon runs on."""
    from types import SimpleNamespace

    from supervisor import daemon as daemon_module

    replies: list[Any] = []
    fake = SimpleNamespace(config=SimpleNamespace(path="/etc/app.yaml"), leaving="")
    daemon_module.Daemon._loaded(fake, RuntimeError("a bug"),  # type: ignore[arg-type]
                                 [replies.append])
    assert [(r.code, r.err) for r in replies] == [
        (7, "reload refused; still running the previous config.\ncannot load /etc/app.yaml: "
            "RuntimeError: a bug\n")]


@pytest.mark.parametrize(("text", "message"), [
    ('supervisor:\n  http_token_file: "\\ud800"\n' + worker(""),
     "app.yaml:2: supervisor.http_token_file: '\\ud800' contains a lone surrogate"),
    ('supervisor:\n  log_dir: "x\\udfff"\n' + worker(""),
     "app.yaml:2: supervisor.log_dir: 'x\\udfff' contains a lone surrogate"),
    (worker('stdout: {path: "\\ud800.log"}'),
     "app.yaml:4: workers.a.stdout.path: '\\ud800.log' contains a lone surrogate"),
    ('workers:\n  a:\n    command: [sleep, "\\udc80"]\n',
     "app.yaml:3: workers.a.command[1]: '\\udc80' contains a lone surrogate"),
    (worker('environment: {A: "\\ud800"}'), "app.yaml:4: workers.a.environment.A: '\\ud800' "),
    (worker('environment: {"\\ud800": x}'),
     "app.yaml:4: workers.a.environment: the key '\\ud800' contains a lone surrogate"),
    ('workers:\n  "\\ud800":\n    command: sleep 1\n',
     "app.yaml:2: workers: the key '\\ud800' contains a lone surrogate"),
])
def test_a_lone_surrogate_escape_is_refused_by_the_yaml_layer(text: str, message: str) -> None:
    # A "\ud800" escape in a double-quoted YAML string decodes to half a UTF-16 pair, which
    # no path, argument or variable can be encoded from: http_token_file ended in the loader's
    # catch-all ("cannot load the config: UnicodeEncodeError"), a log path passed --check.
    errs = errors(text)
    assert len(errs) == 1 and errs[0].startswith(message), errs


def test_an_empty_socket_path_is_refused_by_check() -> None:
    # It passed --check, and the daemon then said only "[Errno 2] No such file or directory: ''".
    errs = errors("supervisor:\n  socket: ''\n" + worker(""))
    assert errs == ["app.yaml:2: supervisor.socket: must not be empty (null means the default "
                    "path)"], errs


def test_a_socket_in_a_directory_others_can_write_is_refused_by_check(tmp_path: Path) -> None:
    """The daemon refuses at start a socket in /tmp (others could plant links where its lock
    goes): --check said OK. A directory the daemon will make itself is fine."""
    errs = errors("supervisor:\n  socket: /tmp/app.sock\n" + worker(""))
    assert errs == ["app.yaml:2: supervisor.socket: /tmp: is owned by uid 0, mode 1777: other "
                    f"users can write it; put the control socket in a directory only uid "
                    f"{os.geteuid()} can write"], errs
    (tmp_path / "afile").write_text("x")
    errs = errors(f"supervisor:\n  socket: {tmp_path}/afile/app.sock\n" + worker(""))
    assert errs == [f"app.yaml:2: supervisor.socket: {tmp_path}/afile: is not a directory"], errs
    load_config(write(f"supervisor:\n  socket: {tmp_path}/new/sub/app.sock\n" + worker("")))
    load_config(write(f"supervisor:\n  socket: {tmp_path}/app.sock\n" + worker("")))


def test_a_log_directory_that_cannot_be_made_is_refused_by_check(tmp_path: Path) -> None:
    """--check said OK, then every spawn failed: a log_dir under a file, a log_dir that is a
    file, a name past 255 bytes, a worker's log path under a file. One that is still to be
    made is fine."""
    (tmp_path / "afile").write_text("x")
    long = "a" * 256
    assert errors(f"supervisor:\n  log_dir: {tmp_path}/afile/logs\n" + worker("")) == [
        f"app.yaml:2: supervisor.log_dir: {tmp_path}/afile/logs cannot be made: "
        f"{tmp_path}/afile is not a directory"]
    assert errors("supervisor:\n  log_dir: /dev/null\n" + worker("")) == [
        "app.yaml:2: supervisor.log_dir: /dev/null is not a directory"]
    assert errors(f"supervisor:\n  log_dir: {tmp_path}/{long}\n" + worker("")) == [
        f"app.yaml:2: supervisor.log_dir: a name in {tmp_path}/{long} is longer than 255 "
        "bytes, the limit of a file name"]
    assert errors(worker(f"stdout: {{path: '{tmp_path}/afile/{{index}}.log'}}")) == [
        f"app.yaml:4: workers.a.stdout.path: {tmp_path}/afile is not a directory"]
    load_config(write(f"supervisor:\n  log_dir: {tmp_path}/new/logs\n" + worker("")))


@pytest.mark.parametrize(("text", "where", "code"), [
    ("workers:\n  a:\n    command: sle\x00ep 1\n", "3:17", 0),
    ("workers:\n  a:\n    command: sleep 1\x07\x1b[2J\n", "3:21", 7),
    ("\x01workers: {}\n", "1:1", 1),
])
def test_a_raw_control_character_is_named_with_its_line(text: str, where: str,
                                                         code: int) -> None:
    # It was 'invalid YAML: unacceptable character #x0000: special characters are not
    # allowed   in "<unicode string>", position 30': no line, and a name of PyYAML's own.
    assert errors(text) == [f"app.yaml:{where}: invalid YAML: control character U+{code:04X} "
                            "in the text; remove it (YAML allows tabs, newlines and printable "
                            "characters)"]


def test_a_directory_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    errs = errors(worker(f"directory: {tmp_path / 'afile'}"))
    assert errs == [f"app.yaml:4: workers.a.directory: is not a directory: {tmp_path / 'afile'}"]
    errs = errors(worker(f"directory: {tmp_path / 'none'}"))
    assert errs == [f"app.yaml:4: workers.a.directory: no such directory: {tmp_path / 'none'}"]


def test_a_config_that_is_a_fifo_or_a_device_never_blocks(tmp_path: Path) -> None:
    # A FIFO put where the config was blocked --check's open for ever (and a reload: the
    # daemon's loop with it).
    os.mkfifo(tmp_path / "fifo.yaml")
    for name in ("fifo.yaml", "/dev/zero"):
        r = subprocess.run([sys.executable, "-m", "supervisor.daemon", "-c", name, "--check"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
        assert (r.returncode, r.stderr) == (
            2, f"{name}: is a FIFO, socket or device, not a regular file; a config is a file\n")


def test_a_reload_of_a_config_turned_into_a_fifo_is_refused_at_once(daemon: Any) -> None:  # noqa: F811
    d = daemon({"a": {"command": "sleep 1000", **QUICK}})
    d.wait_state("a:0", "RUNNING")
    before = d.pids()
    good = d.config_path.read_text()
    d.config_path.unlink()
    os.mkfifo(d.config_path)
    try:
        r = d.ctl("reload")
        assert r.returncode == 7 and "is a FIFO, socket or device" in r.stderr, r
        assert d.pids() == before
    finally:
        d.config_path.unlink()
        d.config_path.write_text(good)
    r = d.ctl("reload")
    assert (r.returncode, r.stdout) == (0, "no changes\n"), r


def test_check_warns_of_a_config_others_can_change(tmp_path: Path) -> None:
    # A root daemon ran what a file writable by every user (or owned by one) said, silently.
    from supervisor.config.checks import file_warnings

    path = tmp_path / "app.yaml"
    path.write_text(worker(""))
    os.chmod(tmp_path, 0o755)
    assert file_warnings(str(path)) == []
    os.chmod(path, 0o666)
    assert file_warnings(str(path)) == [
        f"{path}: warning: the file ({path}) is writable by every user, who can change what "
        f"supervisord runs; chmod o-w {path}"]
    os.chmod(path, 0o644)
    os.chmod(tmp_path, 0o777)       # not sticky: anyone can replace the file
    assert file_warnings(str(path)) == [
        f"{path}: warning: its directory ({tmp_path}) is writable by every user, who can "
        f"change what supervisord runs; chmod o-w {tmp_path}"]
    os.chmod(tmp_path, 0o1777)      # sticky, like /tmp: only the owner can replace it
    assert file_warnings(str(path)) == []
    os.chmod(tmp_path, 0o755)
    os.chown(path, 65534, -1)
    r = subprocess.run([sys.executable, "-m", "supervisor.daemon", "-c", str(path), "--check"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{path}: OK (1 worker, 1 warning)\n", (
        f"{path}: warning: the file ({path}) is owned by uid 65534, who can change what "
        f"supervisord runs (as uid {os.geteuid()}); chown it to root or the daemon's user\n")), r
