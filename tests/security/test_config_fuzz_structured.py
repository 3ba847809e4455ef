"""A seeded structured fuzzer of the config: valid configs with one or two fields set to
hostile values (wrong types, huge and negative numbers, NaN/inf, huge strings, odd names,
NUL, unicode, alias bombs, deep nesting, duplicate keys), and wholly random ones. Each outcome
is a Config or a ConfigError whose every line names the file and is short, never the
catch-all "cannot load the config" (a bug below), within a bounded time; --check's warning
functions run on every config that loads. Seeded and capped at a few seconds."""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import yaml

from supervisor.config import ConfigError, load_config
from supervisor.config.checks import file_warnings, output_warnings, program_warnings

BUDGET = 3.0            # seconds for the whole run
PER_FILE = 2.0
SUP = ["socket", "socket_group", "socket_mode", "log_dir", "block_prefix", "log_level",
       "cgroups", "shutdown_timeout", "http", "http_allow_remote", "http_token_file",
       "http_ready", "http_metrics_instances"]
WORKER = ["command", "numprocs", "directory", "environment", "user", "group", "autostart",
          "restart", "exit_codes", "backoff", "start_retries", "start_seconds",
          "graceful_timeout", "stop_signal", "kill_timeout", "crash_burst", "crash_interval",
          "heartbeat_timeout", "stdout", "stderr", "umask", "stop_mode", "priority",
          "depends_on"]
NAMES = ["web", "a.b", "a/b", "..", ".", "", "x" * 300, "été", "a:b", "a*", "a?[", "-x",
         "x\x00y", " sp", "0", "\u202e", "a\nb", "{index}", "$(id)", "\U0001F600"]
VALUES: list[Any] = [
    0, -1, 1, 2**63, -2**63, 2**64 + 1, 10**30, float("nan"), float("inf"), -float("inf"),
    1e-320, -0.0, True, False, None, "", "x" * 5000, "x" * 100_000, "\x00", "a\x00b", "/",
    "/dev/zero", "/proc/self/mem", "../../etc/passwd", "..", "0777", "0o777", "09", "1e3",
    "1TB", "99999999999999999999TB", "-5MB", "nanMB", "SIGFOO", "KILL", "65", "-9",
    "{index}{index}", "{" * 100, "root", "nosuchuser", "4294967295", 4294967295, 65534,
    "\t", "\n", "always", "never", "graceful", "daemon", "stdout", "[1,2]",
    "127.0.0.1:99999", "127.0.0.1:0", "0.0.0.0:1", "[::1]:9", "localhost:-1", "/" + "a" * 5000]
GOOD = {"command": ["sleep", "10"], "numprocs": 2, "restart": "always",
        "stdout": {"max_bytes": "1MB", "backups": 2}, "stderr": "stdout",
        "environment": {"A": "{index}"}, "backoff": {"initial": 0.5, "factor": 2, "max": 5},
        "stop_signal": "TERM", "kill_timeout": 3, "priority": 5, "umask": "022"}


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(40)
    if kind < 30 or depth > 3:
        return rng.choice(VALUES)
    if kind < 35:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(NAMES + WORKER + SUP): _value(rng, depth + 1)
            for _ in range(rng.randrange(5))}


def _config(rng: random.Random, tmp: Path) -> dict[str, Any]:
    workers: dict[str, Any] = {n: copy.deepcopy(GOOD)
                               for n in rng.sample(["a", "b", "c"], rng.randrange(1, 4))}
    sup: dict[str, Any] = {"log_dir": str(tmp / "logs"), "socket": str(tmp / "run" / "s.sock")}
    for _ in range(rng.randrange(3)):
        if rng.random() < 0.3:
            sup[rng.choice(SUP)] = _value(rng)
            continue
        name = rng.choice(list(workers))
        if not isinstance(workers[name], dict):
            continue
        key = rng.choice(WORKER + ["stdout.path", "stdout.max_bytes", "backoff.max", "env",
                                   "name", "random"])
        if "." in key:
            outer, inner = key.split(".")
            if isinstance(workers[name].get(outer), dict):
                workers[name][outer][inner] = _value(rng)
        elif key == "env" and isinstance(workers[name].get("environment"), dict):
            workers[name]["environment"][rng.choice(NAMES)] = _value(rng)
        elif key == "name":
            workers[rng.choice(NAMES)] = workers.pop(name)
        elif key == "random":
            workers[name] = _value(rng)
        else:
            workers[name][key] = _value(rng)
    return {"supervisor": sup, "workers": workers}


def _text(rng: random.Random, data: dict[str, Any]) -> str:
    text = yaml.safe_dump(data, allow_unicode=rng.random() < 0.5)
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        kind = rng.randrange(5)
        if kind == 0:                                   # a billion laughs
            text = "".join(f"x-{k}: &{k} [" + ",".join([f"*{k - 1}" if k else "'x'"] * 10)
                           + "]\n" for k in range(9)) + text
        elif kind == 1:
            text += "workers: {}\n"                     # a duplicate key
        elif kind == 2:
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(["\x00", "\t", "{", "[", "&x ", "*x", "<<: *x\n",
                                           "!!python/name:os.system", "\ufeff"]) + text[at:]
        elif kind == 3:
            text += "x-deep: " + "[" * rng.choice([50, 1000, 100_000]) + "\n"
        else:
            text += "x-deep: " + "{a: " * rng.choice([50, 5000]) + "1" + "}" * 50 + "\n"
    return text


def test_structured_fuzz_gives_a_config_or_short_errors_naming_the_file(tmp_path: Path) -> None:
    rng = random.Random(20261201)
    path = tmp_path / "fuzz.yaml"
    (tmp_path / "logs").mkdir()
    start, runs, loaded = time.monotonic(), 0, 0
    while time.monotonic() - start < BUDGET:
        text = _text(rng, _config(rng, tmp_path))
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        began = time.monotonic()
        try:
            config = load_config(str(path))
        except ConfigError as e:
            assert "cannot load the config:" not in str(e), (str(e)[:500], text[:2000])
            for line in e.errors:
                assert line.startswith(f"{path}"), (line[:300], text[:2000])
                assert len(line) < 2000, (len(line), line[:300])
        else:
            loaded += 1
            file_warnings(str(path))
            program_warnings(config)
            output_warnings(config)
        took = time.monotonic() - began
        assert took < PER_FILE, (took, text[:2000])
        runs += 1
    assert runs >= 50 and loaded >= 1, (runs, loaded)
