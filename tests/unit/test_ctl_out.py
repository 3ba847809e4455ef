"""supervisor.ctl.out.echo writes what click.echo writes (both CLI paths print through it, so
the fast-path comparison cannot tell whether it still matches click): the same texts through
both, into pipes and a terminal, with the streams' encodings set to UTF-8, ASCII and Latin-1."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from tests.support.child import read_terminal
from tests.unit.test_ctl import REPO, child_env

TEXTS = ["plain", "caf\u00e9 \U0001f600", "\x1b[31mred\x1b[0m \x1b[2J", "", "a\udcffb",
         "two\nlines\n", "\x1b]0;title\x07bell"]
PROGRAM = """\
import os, sys
texts = {texts}
if {impl!r} == "click":
    from click import echo
    def say(t, err, nl):
        echo(t, err=err, nl=nl)
else:
    from supervisor.ctl.out import echo
    def say(t, err, nl):
        echo(t, err=err, nl=nl)
for t in texts:
    for err in (False, True):
        for nl in (True, False):
            try:
                say(t, err, nl)
            except Exception as e:
                os.write(2, f"<{{type(e).__name__}}>".encode())
            os.write(2 if err else 1, b"|")
"""


def run(impl: str, env: dict[str, str], tty: bool) -> tuple[int, bytes, bytes]:
    code = PROGRAM.format(texts=ascii(TEXTS), impl=impl)
    if not tty:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env,
                           cwd=REPO, timeout=60, check=False)
        return p.returncode, p.stdout, p.stderr
    master, slave = pty.openpty()
    try:
        p2 = subprocess.run([sys.executable, "-c", code], stdout=slave, stderr=subprocess.PIPE,
                            env=env, cwd=REPO, timeout=60, check=False)
        os.close(slave)
        slave = -1
        shown = read_terminal(master)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return p2.returncode, shown, p2.stderr


def test_echo_matches_click() -> None:
    base = child_env()
    for extra in ({}, {"PYTHONIOENCODING": "ascii"}, {"PYTHONIOENCODING": "latin-1"},
                  {"PYTHONIOENCODING": "utf-8:strict"}, {"LC_ALL": "C", "PYTHONUTF8": "0"}):
        env = {**base, **extra}
        for tty in (False, True):
            ours, theirs = run("out", env, tty), run("click", env, tty)
            assert ours == theirs, (extra, tty, ours, theirs)
            assert ours[0] == 0, ours
