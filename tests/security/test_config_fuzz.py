"""Fuzzing the config loader: whatever the text, load_config returns a Config or raises
ConfigError -- never another exception -- and in bounded time. Hypothesis prints the failing
example (and how to reproduce it) when one is found; the examples are bounded so that the
whole file runs in about 20 s."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = (REPO / "configs" / "example.yaml").read_text()
SETTINGS = settings(max_examples=150, deadline=3000, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PER_EXAMPLE = 2.0     # seconds; the slowest legitimate small file loads in milliseconds

KEYS = ["workers", "supervisor", "command", "numprocs", "directory", "environment", "user",
        "autostart", "restart", "exit_codes", "backoff", "initial", "factor", "max",
        "start_retries", "start_seconds", "graceful_timeout", "stop_signal", "kill_timeout",
        "heartbeat_timeout", "stdout", "stderr", "path", "max_bytes", "backups", "priority",
        "depends_on", "socket", "socket_group", "socket_mode", "log_dir", "block_prefix",
        "log_level", "shutdown_timeout", "<<", "x-d", "web", "db"]
SCALARS = ["0", "1", "-1", "1.5", "1e20", "1.0e+20", "1.0e+300", ".inf", "-.inf", ".nan", "~",
           "null", "true", "no", "0x" + "f" * 40, "9" * 200, "9" * 5000, "1:2:3", "0o777",
           "'0600'", "10MB", "1TiB", "'" + "9" * 400 + "T'", "TERM", "SIGKILL", "99999",
           '"a\\0b"', '"\\0"', '"x\\ny"', "'{index}'", "'{bad}'", "'{'", "sleep 1",
           "'unterminated", "2001-12-14", "!!python/object:os.system x", "!!binary aGk=",
           "!!int zz", "!!bool maybe", "!!timestamp x", "!!float y", "!local z", "!!str 5",
           "&a x", "*a", "*nope", "<<", "[]", "{}", "[*a, *a, *a]", "|\n  block\n"]
SNIPPETS = SCALARS + ["\n", ": ", "- ", "  ", "\t", "[", "]", "{", "}", ",", "&b [1, 2]", "*b",
                      "<<: *b", "? ", "---\n", "...\n", "#", "%YAML 1.1\n", "\x00", "\ufeff"]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"


def check(path: Path, text: str | bytes) -> None:
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    path.write_bytes(text)
    start = time.perf_counter()
    try:
        result = load_config(str(path))
    except ConfigError as e:
        assert e.errors and all(isinstance(line, str) and line for line in e.errors), e.errors
        assert "Traceback" not in str(e)
    else:
        assert isinstance(result, Config)
    took = time.perf_counter() - start
    assert took < PER_EXAMPLE, f"load_config took {took:.2f} s"


# -- mutations of the example config -------------------------------------------------------------

@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    text = EXAMPLE
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "line", "value"]))
        if kind == "insert":
            text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif kind == "replace":
            text = text[:at] + draw(st.text(max_size=8)) + text[at + draw(st.integers(0, 8)):]
        elif kind == "line":
            lines = text.splitlines(keepends=True)
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
            text = "".join(lines)
        else:          # a value after some "key: " replaced by a hostile scalar
            i = text.find(": ", at)
            if i >= 0:
                j = text.find("\n", i)
                text = text[:i + 2] + draw(st.sampled_from(SCALARS)) + text[j if j >= 0 else
                                                                             len(text):]
    return text


@SETTINGS
@given(text=mutated_example())
def test_mutated_example(config_file: Path, text: str) -> None:
    check(config_file, text)


# -- random YAML-ish documents: mappings, tags, anchors, aliases, deep nesting ---------------

def yamlish(depth: int) -> st.SearchStrategy[str]:
    scalar = st.sampled_from(SCALARS)
    if depth == 0:
        return scalar
    inner = yamlish(depth - 1)
    return st.one_of(
        scalar,
        st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(st.sampled_from(KEYS), inner), max_size=4).map(
            lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"),
        st.tuples(st.sampled_from(["&a ", "&b ", "!!map ", "!!python/object ", "!t ", ""]),
                  inner).map("".join),
        st.integers(1, 200).map(lambda n: "[" * n + "]" * n),
    )


@st.composite
def random_document(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        key = draw(st.sampled_from(KEYS))
        lines.append(f"{key}: {draw(yamlish(3))}")
    if draw(st.booleans()):
        lines.append(f"workers: {{w: {{command: sleep 1, {draw(st.sampled_from(KEYS))}: "
                     f"{draw(yamlish(2))}}}}}")
    return "\n".join(lines) + "\n"


@SETTINGS
@given(text=random_document())
def test_random_documents(config_file: Path, text: str) -> None:
    check(config_file, text)


# -- well-formed YAML with the right keys and arbitrary values --------------------------------

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-10**30, 10**30) | st.floats()
    | st.text(max_size=20) | st.sampled_from(["\0", "a\0", "{index}", "10MB", "TERM", "0660"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner,
                                                                max_size=3),
    max_leaves=12)


@st.composite
def shaped_config(draw: st.DrawFn) -> dict[str, Any]:
    workers = {}
    for name in draw(st.lists(st.sampled_from(["web", "db", "w1", "w-2", "", "-x", "a" * 70]),
                              max_size=3, unique=True)):
        fields = draw(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5))
        workers[name] = {"command": "sleep 1", **fields}
    config: dict[str, Any] = {"workers": workers}
    if draw(st.booleans()):
        config["supervisor"] = draw(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3))
    return config


@SETTINGS
@given(config=shaped_config())
def test_shaped_configs(config_file: Path, config: dict[str, Any]) -> None:
    check(config_file, yaml.safe_dump(config, allow_unicode=True))


@SETTINGS
@given(data=st.binary(max_size=200))
def test_random_bytes(config_file: Path, data: bytes) -> None:
    check(config_file, data)
