"""``supervisord --convert`` on real-world supervisord.conf files.

Each file in tests/unit/data/supervisord/ came from a public repository, named on its first
line. For each, the YAML and the notes (stderr lines) must be exactly the golden files beside
it (NAME.yaml and NAME.notes), and the YAML must load with pyvisor's own loader.

After a deliberate change to the converter, regenerate the goldens and read their diff before
committing it:

    PYVISOR_REGEN_GOLDENS=1 .venv/bin/python -m pytest -q tests/unit/test_convert.py
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from supervisor.config import load_config
from supervisor.convert import convert
from supervisor.daemon import main

DATA = Path(__file__).parent / "data" / "supervisord"
BAD = Path(__file__).parent / "data" / "supervisord-bad"
REPO = Path(__file__).resolve().parents[2]
# What %(ENV_X)s refers to in the files (their containers set it at run time).
ENVIRON = {"GUNICORN_WORKERS": "4", "WEB_WORKERS": "2"}
REGEN = os.environ.get("PYVISOR_REGEN_GOLDENS") == "1"
CASES = sorted(str(p.relative_to(DATA)) for p in DATA.glob("*.conf")) + [
    "laravel-queue/supervisord.conf"]     # its conf.d/*.conf is read through its [include]


def golden(path: Path, text: str) -> str:
    if REGEN:
        path.write_text(text, encoding="utf-8")
    return path.read_text(encoding="utf-8")


@pytest.fixture
def in_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Notes name files as given: convert relative names from the data directory."""
    monkeypatch.chdir(DATA)


def test_there_are_enough_real_world_files() -> None:
    assert len(CASES) >= 8
    for case in CASES:
        first = (DATA / case).read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("; source: github.com/"), case


@pytest.mark.parametrize("case", CASES)
@pytest.mark.usefixtures("in_data")
def test_golden(case: str) -> None:
    text, notes = convert(case, environ=ENVIRON, hostname="testhost")
    stem = (DATA / case).with_suffix("")
    assert text == golden(stem.with_suffix(".yaml"), text)
    lines = "".join(n + "\n" for n in notes)
    assert lines == golden(stem.with_suffix(".notes"), lines)


def runnable_here(data: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The converted files name the directories (/var/www, /app) and users (sail, paperless)
    of the machines they came from, which load_config checks: a missing directory is made
    under tmp_path, and a missing user becomes this one. Nothing else is changed."""
    me = pwd.getpwuid(os.getuid()).pw_name
    for worker in data["workers"].values():
        directory = worker.get("directory")
        if directory is not None and not os.path.isdir(directory):
            worker["directory"] = str(tmp_path / "dirs" / directory.lstrip("/"))
            os.makedirs(worker["directory"], exist_ok=True)
        try:
            pwd.getpwnam(worker.get("user", me))
        except KeyError:
            worker["user"] = me
    return data


@pytest.mark.parametrize("case", CASES)
@pytest.mark.usefixtures("in_data")
def test_converted_file_loads(case: str, tmp_path: Path) -> None:
    text, _ = convert(case, environ=ENVIRON, hostname="testhost")
    data = runnable_here(yaml.safe_load(text), tmp_path)
    path = tmp_path / "converted.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    config = load_config(str(path))
    assert sorted(config.workers) == sorted(data["workers"])


def test_cli_prints_yaml_on_stdout_and_notes_on_stderr(in_data: None) -> None:
    result = CliRunner(env=ENVIRON).invoke(main, ["--convert", "erpnext.conf"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (DATA / "erpnext.yaml").read_text(encoding="utf-8")
    assert result.stderr == (DATA / "erpnext.notes").read_text(encoding="utf-8")


def test_cli_needs_no_config_with_convert(in_data: None) -> None:
    """Neither -c nor $PYVISOR_CONFIG is needed; $PYVISOR_CONFIG set is no conflict."""
    result = CliRunner(env={"PYVISOR_CONFIG": None}).invoke(
        main, ["--convert", "nginx-gunicorn.conf"])
    assert result.exit_code == 0, result.output
    env = {**ENVIRON, "PYVISOR_CONFIG": "elsewhere.yaml"}
    result = CliRunner(env=env).invoke(main, ["--convert", "nginx-gunicorn.conf"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("extra", [["--check"], ["-c", "app.yaml"]])
def test_cli_refuses_convert_with_a_normal_run(extra: list[str]) -> None:
    result = CliRunner().invoke(main, ["--convert", str(DATA / "erpnext.conf"), *extra])
    assert result.exit_code == 2
    assert result.stdout == ""
    flag = "--check" if extra == ["--check"] else "--config"
    assert result.stderr == (f"supervisord: --convert runs nothing, so it takes no {flag}; "
                             "convert first, then run: supervisord -c FILE.yaml\n")


def test_a_template_that_supervisord_refuses_exits_2_naming_the_line() -> None:
    """fcwu's file is a template its start script fills in (%USER%): supervisord cannot read
    it as it is, so neither can the converter; the message names the file, line and fault."""
    proc = subprocess.run([sys.executable, "-m", "supervisor.daemon", "--convert",
                           "fcwu-template.conf"], cwd=BAD, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == ("fcwu-template.conf:43: [program:cloud9] user: '%U' at character 1 "
                           "is not a %(name)s reference; write %% for a literal % (got "
                           "'%USER%')\n")
