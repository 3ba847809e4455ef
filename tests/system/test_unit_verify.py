"""systemd/supervisord.service passes `systemd-analyze verify` and keeps its deliberate settings.

Plain `systemd-analyze verify` exits 0 on unknown keys (a typo is only a warning), so the check
uses --recursive-errors=yes AND requires stderr to say nothing about our unit. verify also
fails when ExecStart='s binary does not exist: the copy under test points at the bin/ of the
venv running the tests, where `pip install` put the console scripts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "supervisord.service"
INSTALL_BIN = "/opt/pyvisor/bin/"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """[Section] -> key -> values (in order; keys may repeat). No continuation lines used."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{UNIT}: not KEY=VALUE: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?", value):
        total += float(num) * {"ms": 0.001, "": 1, "s": 1, "min": 60, "m": 60, "h": 3600}[unit]
    return total


def test_unit_verifies_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    venv_bin = Path(sys.prefix) / "bin"
    for script in ("supervisord", "supervisorctl"):
        assert (venv_bin / script).is_file(), (
            f"{venv_bin / script} missing: install the project into the test venv "
            f"(pip install -e .) so verify can check ExecStart=/ExecReload="
        )
    text = UNIT.read_text().replace(INSTALL_BIN, f"{venv_bin}/")
    assert INSTALL_BIN not in text
    copy = tmp_path / "supervisord.service"
    copy.write_text(text)
    proc = subprocess.run(
        [analyze, "verify", "--recursive-errors=yes", str(copy)],
        check=False, capture_output=True, text=True, timeout=60,
    )
    ours = [
        ln for ln in proc.stderr.splitlines()
        if "supervisord.service" in ln or str(tmp_path) in ln
    ]
    assert proc.returncode == 0 and not ours, (
        f"systemd-analyze verify rc={proc.returncode}\n"
        f"stderr:\n{proc.stderr}\nstdout:\n{proc.stdout}"
    )


def test_verify_catches_a_typo(tmp_path: Path) -> None:
    """The check above would notice a misspelt key (guards the guard)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    bad = tmp_path / "typo.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nKilMode=process\n")
    proc = subprocess.run([analyze, "verify", "--recursive-errors=yes", str(bad)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert "KilMode" in proc.stderr, proc.stderr


def test_deliberate_settings() -> None:
    unit = parse_unit(UNIT.read_text())
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "KillMode": "process",          # workers survive a daemon crash and get adopted
        "RemoveIPC": "no",              # the control blocks in /dev/shm must survive
        "Restart": "on-failure",
        "ExecStart": "/opt/pyvisor/bin/supervisord -c /etc/pyvisor/supervisord.yaml",
        "ExecReload": "/opt/pyvisor/bin/supervisorctl -c /etc/pyvisor/supervisord.yaml reload",
    }
    for key, value in expected.items():
        assert svc.get(key) == value, f"[Service] {key}={svc.get(key)!r}, want {value!r}"
    assert "DynamicUser" not in svc, "DynamicUser= implies RemoveIPC=yes"
    assert svc.get("PrivateTmp", "no") == "no", "workers must see the machine's /tmp"
    assert seconds(svc["WatchdogSec"]) > 0
    assert "WantedBy" in unit["Install"]


def test_timeout_stop_covers_the_default_graceful_stop() -> None:
    """TimeoutStopSec > graceful_timeout + kill_timeout + margin, for the default policy."""
    from supervisor.core.types import Policy

    svc = {k: v[-1] for k, v in parse_unit(UNIT.read_text())["Service"].items()}
    p = Policy()
    need = p.graceful_timeout + p.kill_timeout + 5.0
    assert seconds(svc["TimeoutStopSec"]) > need, (svc["TimeoutStopSec"], need)
