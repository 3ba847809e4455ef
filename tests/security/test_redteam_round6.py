"""Round 6 of red-teaming the inputs: each finding as a regression test.

- a huge value in the config (a 200 KB string) was echoed whole into its error line (and so
  into --check's output and a reload's reply): lines keep the file, field and fix, and say how
  long the value was instead;
- an http Unix socket in a directory other users can write (/tmp, /dev/shm) was accepted: they
  could bind the name before the daemon (and be sent the bearer token of every POST) or swap it
  for a link between the daemon's bind and its chmod/chown. It is refused like the control
  socket's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.config import ConfigError, load_config
from supervisor.http.address import parse_address
from supervisor.http.exchange import Router
from supervisor.http.server import HttpError, HttpServer
from supervisor.loop import Loop

BIG = 200_000


def _errors(path: Path, text: str) -> list[str]:
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    return e.value.errors


@pytest.mark.parametrize(("field", "value", "says"), [
    ("numprocs", "'" + "9" * BIG + "'", "workers.w.numprocs: must be an integer"),
    ("user", "'" + "x" * BIG + "'", "workers.w.user: no such user"),
    ("directory", "'/" + "x" * BIG + "'", "workers.w.directory: no such directory"),
    ("stop_signal", "'" + "x" * BIG + "'", "workers.w.stop_signal: unknown signal"),
    ("depends_on", "['" + "x" * BIG + "']", "workers.w.depends_on[0]: unknown worker"),
])
def test_a_huge_value_makes_a_short_error_line(tmp_path: Path, field: str, value: str,
                                               says: str) -> None:
    path = tmp_path / "big.yaml"
    errors = _errors(path, f"workers:\n  w:\n    command: sleep 1\n    {field}: {value}\n")
    assert len(errors) == 1, errors
    line = errors[0]
    assert line.startswith(f"{path}:4: {says}"), line[:300]
    assert len(line) < 800, f"{len(line)} characters: {line[:300]}"
    assert "characters]" in line, line


def test_clip_keeps_the_file_and_short_lines() -> None:
    from supervisor.config.errors import clip
    long_file = "/" + "d" * 200 + "/app.yaml:3:"
    assert clip(f"{long_file} workers.w.numprocs: must be ≥ 1 (got 0)") == (
        f"{long_file} workers.w.numprocs: must be ≥ 1 (got 0)")
    line = clip("f.yaml:1: workers.w.user: no such user (got '" + "x" * 2000 + "'); fix it")
    assert line.startswith("f.yaml:1: workers.w.user: no such user (got 'xxx")
    assert line.endswith("…[2,004 characters] fix it"), line


def test_check_prints_short_warnings_for_a_huge_command(tmp_path: Path) -> None:
    path = tmp_path / "cmd.yaml"
    path.write_text(f"supervisor: {{log_dir: {tmp_path}, socket: {tmp_path}/s.sock}}\n"
                    f"workers:\n  w:\n    command: [/nonexistent/{'p' * 100_000}]\n")
    r = subprocess.run([sys.executable, "-m", "supervisor.daemon", "--check", "-c", str(path)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in r.stderr
    assert len(r.stderr) < 3000, f"{len(r.stderr)} characters: {r.stderr[:300]}"
    assert "workers.w.command" in r.stderr, r.stderr


@pytest.fixture
def sticky_dir(tmp_path: Path) -> Path:
    """A directory like /tmp: everyone may write it (sticky)."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    return d


def test_http_socket_in_a_directory_others_can_write_is_a_config_error(
        tmp_path: Path, sticky_dir: Path) -> None:
    path = tmp_path / "http.yaml"
    errors = _errors(path, f"supervisor: {{log_dir: {tmp_path}, socket: {tmp_path}/s.sock, "
                           f"http: {sticky_dir}/h.sock}}\n"
                           "workers:\n  w:\n    command: sleep 1\n")
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}:1: supervisor.http: {sticky_dir}: "), errors
    assert "other users can write it; put the http socket in a directory only uid" in errors[0]


def test_http_server_refuses_a_unix_socket_in_a_directory_others_can_write(
        sticky_dir: Path) -> None:
    loop = Loop()
    try:
        with pytest.raises(HttpError, match="other users can write it"):
            HttpServer(loop, parse_address(f"{sticky_dir}/h.sock"), Router())
        assert not (sticky_dir / "h.sock").exists()
    finally:
        loop.close()


# -- the converter: many [include]d files ---------------------------------------------------------

def _many_includes(tmp_path: Path, n: int) -> Path:
    inc = tmp_path / "conf.d"
    inc.mkdir()
    for i in range(n):
        (inc / f"p{i:04}.conf").write_text(
            f"[program:p{i}]\ncommand=sleep {i}\nstdout_logfile=%(here)s/p{i}.log\n")
    main = tmp_path / "supervisord.conf"
    main.write_text("[supervisord]\n[include]\nfiles = conf.d/*.conf\n")
    return main


def test_convert_reads_many_included_files_in_linear_work(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """3,000 included files took 15 s (10,000: minutes): every file was read into the one
    parser, which re-joins the values of every section it holds after each read, and
    %(here)s was looked for in every section after each file. Counted, not timed: the
    sections visited by both must grow with the number of files, not its square."""
    import configparser

    from supervisor.convert import convert

    n = 400
    main = _many_includes(tmp_path, n)
    visited = {"join": 0, "items": 0}
    join = configparser.RawConfigParser._join_multiline_values   # type: ignore[attr-defined]
    items = configparser.RawConfigParser.items

    def counting_join(self: configparser.RawConfigParser) -> None:
        visited["join"] += len(self.sections())
        join(self)

    def counting_items(self: configparser.RawConfigParser, *args: Any, **kwargs: Any) -> Any:
        visited["items"] += 1
        return items(self, *args, **kwargs)

    monkeypatch.setattr(configparser.RawConfigParser, "_join_multiline_values", counting_join)
    monkeypatch.setattr(configparser.RawConfigParser, "items", counting_items)
    text, _notes = convert(str(main))
    assert text.count("command: sleep") == n
    assert f"{tmp_path}/conf.d/p{n - 1}.log" in text
    assert visited["join"] <= 2 * n + 10, visited
    assert visited["items"] <= 10 * n, visited


def test_convert_here_in_an_included_default_is_each_files_directory(tmp_path: Path) -> None:
    """The slow path kept for a [DEFAULT] holding %(here)s: as supervisord, each section
    gets the directory of the file read when it first saw the default."""
    from supervisor.convert import convert

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "1.conf").write_text(
        "[DEFAULT]\ndirectory=%(here)s\n[program:one]\ncommand=sleep 1\n")
    (tmp_path / "b" / "2.conf").write_text("[program:two]\ncommand=sleep 2\n")
    main = tmp_path / "supervisord.conf"
    main.write_text("[supervisord]\n[include]\nfiles = a/*.conf b/*.conf\n"
                    "[program:zero]\ncommand=sleep 0\n")
    data = yaml.safe_load(convert(str(main))[0])
    dirs = {name: w.get("directory") for name, w in data["workers"].items()}
    assert dirs == {"zero": f"{tmp_path}/a", "one": f"{tmp_path}/a", "two": f"{tmp_path}/b"}, dirs


def test_convert_an_included_file_that_is_not_ini_gets_a_short_error(tmp_path: Path) -> None:
    """A glob that matches a log file: 100,000 lines that are not INI took 47 s (configparser
    builds its report by string concatenation) and printed 100,000 lines; now the first 20
    and a count. A 3 MB line is shown by its start."""
    from supervisor.convert import ConvertError, convert

    (tmp_path / "app.log.conf").write_text(
        "[x]\n" + "".join(f"2026-12-01 INFO request {i} done\n" for i in range(5000)))
    (tmp_path / "long.conf").write_text("[x]\n" + "a" * 3_000_000 + "\n")
    main = tmp_path / "supervisord.conf"
    for name in ("app.log.conf", "long.conf"):
        main.write_text(f"[supervisord]\n[include]\nfiles = {name}\n")
        with pytest.raises(ConvertError) as e:
            convert(str(main))
        lines = e.value.lines
        assert len(lines) <= 21, len(lines)
        assert all(len(line) < 600 for line in lines), max(map(len, lines))
        assert lines[0].startswith(f"{tmp_path}/{name}:2: not a 'key = value' line"), lines[0]
    assert lines[0].endswith("... (3,000,000 characters))"), lines[0][-80:]


def test_convert_names_only_lines_configparser_refuses() -> None:
    """The linear pre-scan against configparser itself: every line it calls bad is one that
    configparser refuses too (seeded, a few thousand small files)."""
    import configparser
    import random

    from supervisor.convert.ini import _lines, _parser, _surely_bad

    pieces = ["[a]", "[b] ;c", "[]", "[x", "x]", "k=v", "k = v ; c", "k: v", "=v", ":v", " =v",
              "k", "garbage", "# c", "; c", "", "   ", "\tcont", "  cont = x", "  [c]",
              "a ; = b", "a # : b", "k=", "[DEFAULT]", "\x0bk=v", "k\x0c=v", "\u2028", " ;x"]
    rng = random.Random(6)
    named = 0
    for _ in range(4000):
        lines = [rng.choice(pieces) for _ in range(rng.randrange(1, 12))]
        if rng.random() < 0.8:
            lines.insert(0, "[s]")
        text = "\n".join(lines)
        mine = set(_surely_bad(_lines(text)))
        try:
            _parser().read_string(text)
            theirs: set[int] = set()
        except configparser.MissingSectionHeaderError:
            continue
        except configparser.ParsingError as e:
            theirs = {n for n, _ in e.errors}
        assert mine <= theirs, (text, mine, theirs)
        named += len(mine)
    assert named > 1000          # it finds them, not only never too many


# -- log rotation: a file whose name went away for a moment ---------------------------------------

def _turn_until(loop: Any, done: Any, timeout: float) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if done():
            return True
        loop.call_later(0.02, lambda: None)      # run_once blocks until a timer or an event
        loop.run_once()
    return bool(done())


def test_rotation_goes_on_for_a_log_put_back_after_its_name_went_away(tmp_path: Path) -> None:
    """A worker owning its log directory (or an operator) moved its log away and back: the
    watch fired for the moved file, the check found no file at the name, arming the watch
    failed (ENOENT) and was never tried again, so the file put back grew unrotated for ever
    (780 MB in 6 s from a `while :; do echo` worker)."""
    from supervisor.logs import Rotator
    from supervisor.loop import Loop

    loop = Loop()
    rot = Rotator(loop, recheck=0.05)
    log, moved = tmp_path / "w-0.out.log", tmp_path / "w-0.moved"
    log.write_bytes(b"x" * 10)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)     # the worker's stdout
    try:
        rot.watch(str(log), 1024, 2, size=10)
        os.rename(log, moved)
        os.write(fd, b"y" * 100)                     # the watch fires for the moved file
        assert _turn_until(loop, lambda: False, 0.3) is False   # its check finds no file
        os.rename(moved, log)                        # put back: no event for it
        os.write(fd, b"z" * 5000)
        assert _turn_until(loop, lambda: (tmp_path / "w-0.out.log.1").exists(), 5.0), (
            "the log put back was never rotated")
        assert log.stat().st_size < 1024
    finally:
        os.close(fd)
        rot.close()
        loop.close()


# -- exec's size limits ---------------------------------------------------------------------------

def test_an_environment_exec_would_refuse_is_a_config_error(tmp_path: Path) -> None:
    """--check said OK to 20 aliases of a 120 KB value (2.4 MB of environment from a 120 KB
    file) and to one 140 KB variable; every spawn then failed with 'Argument list too long',
    naming no field."""
    path = tmp_path / "env.yaml"
    head = (f"supervisor: {{log_dir: {tmp_path}, socket: {tmp_path}/s.sock}}\n"
            "workers:\n  big:\n    command: [sleep, '100']\n    environment:\n")
    aliases = "".join(f"      V{i}: *v\n" for i in range(1, 20))
    errors = _errors(path, head + f"      V0: &v {'x' * 120_000}\n" + aliases)
    assert len(errors) == 1 and errors[0].startswith(
        f"{path}:5: workers.big.environment: the command and environment take "), errors
    assert "(ARG_MAX)" in errors[0]
    errors = _errors(path, head + f"      V0: {'x' * 140_000}\n")
    assert errors == [f"{path}:6: workers.big.environment.V0: V0=VALUE is 140,003 bytes long; "
                      "exec refuses a variable of more than 131,071"], errors


def test_an_argument_is_measured_in_bytes_as_exec_does(tmp_path: Path) -> None:
    path = tmp_path / "arg.yaml"
    head = f"supervisor: {{log_dir: {tmp_path}, socket: {tmp_path}/s.sock}}\nworkers:\n  w:\n"
    for arg, size in (("é" * 70_000, 140_000), ("a" * 131_072, 131_072)):
        errors = _errors(path, head + f"    command: [echo, {arg}]\n")
        assert errors == [f"{path}:4: workers.w.command[1]: is {size:,} bytes long; exec "
                          "refuses an argument of more than 131,071"], errors
    path.write_text(head + f"    command: [echo, {'a' * 131_071}]\n")
    load_config(str(path))
    # the limit is the kernel's: one byte more and exec refuses it
    assert subprocess.run(["true", "a" * 131_071], check=False).returncode == 0
    with pytest.raises(OSError, match="Argument list too long"):
        subprocess.run(["true", "a" * 131_072], check=False)


@pytest.mark.parametrize(("line", "says"), [
    ("command=sleep " + "y" * 200_000, "command: 200,006 characters, more than pyvisor splits "
                                       "(32,768); write it in the YAML as a list"),
    ('command=sleep 1\nenvironment=A="' + "y" * 200_000 + '"',
     "environment: 200,004 characters, more than pyvisor splits (65,536); pass large data "
     "in a file"),
])
def test_convert_refuses_a_command_or_environment_too_long_to_split(tmp_path: Path, line: str,
                                                                     says: str) -> None:
    """shlex takes quadratic time: a 1 MB command= took 47 s to convert (a 4 MB file of them,
    minutes). Within the cap a long one converts."""
    from supervisor.convert import ConvertError, convert

    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[supervisord]\n[program:a]\n{line}\n")
    with pytest.raises(ConvertError) as e:
        convert(str(conf))
    assert len(e.value.lines) == 1 and e.value.lines[0].endswith(f"[program:a] {says}"), (
        e.value.lines)
    conf.write_text("[supervisord]\n[program:a]\ncommand=sleep " + "y" * 30_000 + "\n")
    assert "y" * 30_000 in convert(str(conf))[0]


def test_convert_errors_and_notes_show_a_huge_value_by_its_start(tmp_path: Path) -> None:
    """A 1 MB stopsignal= made a 1 MB error line, a 1 MB [include] glob a 1 MB note."""
    from supervisor.convert import ConvertError, convert

    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\n[program:a]\ncommand=sleep 1\nstopsignal=" + "Y" * BIG + "\n")
    with pytest.raises(ConvertError) as e:
        convert(str(conf))
    assert len(e.value.lines) == 1 and len(e.value.lines[0]) < 800, len(e.value.lines[0])
    assert e.value.lines[0].startswith(f"{conf}:4: [program:a] stopsignal: "), e.value.lines
    assert "characters]" in e.value.lines[0], e.value.lines[0][-200:]
    conf.write_text("[supervisord]\n[include]\nfiles = " + "z" * BIG + "\n"
                    "[program:a]\ncommand=sleep 1\n")
    notes = [str(n) for n in convert(str(conf))[1]]
    assert notes and all(len(n) < 800 for n in notes), max(map(len, notes))


# -- a block's name raced for by another local user -----------------------------------------------

RACER = """
import os, sys, time
path, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except OSError:
        pass
"""


def test_a_block_name_recreated_in_a_loop_by_another_user_does_not_stop_spawns(
        other_user: Any) -> None:
    """A local user re-creating /dev/shm/PREFIX.w:0 in a loop won the race between the
    daemon's unlink of the squatter and its O_EXCL create 142 times in 20 restarts: every
    spawn of the worker failed (BlockTaken) and it went FATAL. The block is now made under a
    hidden random name and renamed over whatever is there."""
    import uuid

    from supervisor.runtime.spawning import create_block
    from worker import block as blk

    prefix = "rt" + uuid.uuid4().hex[:8]
    name = blk.shm_name(prefix, "w:0")
    racer = subprocess.Popen(["python3", "-c", RACER, f"/dev/shm{name}", "20"], cwd="/",
                             user=other_user.uid, group=other_user.gid, extra_groups=[])
    try:
        deadline = time.monotonic() + 5
        while not os.path.exists(f"/dev/shm{name}") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.stat(f"/dev/shm{name}").st_uid == other_user.uid, "the racer is not racing"
        for _ in range(300):      # before the fix: about 30 of them failed
            time.sleep(0.001)     # the racer plants the name again
            block = create_block(name, 0, 7, None, None)
            st = os.stat(f"/dev/shm{name}")
            assert st.st_uid == os.geteuid() and st.st_size == blk.BLOCK_SIZE
            assert block.status_name.startswith(name + ".")
            block.close()
            block.unlink()                 # the name is free again: the racer takes it
    finally:
        racer.kill()
        racer.wait(timeout=10)
        for p in Path("/dev/shm").iterdir():
            if p.name.startswith((prefix, f".{prefix}", f".squatted.{prefix}")):
                p.unlink()


def test_check_warns_of_a_log_directory_every_user_can_write(tmp_path: Path) -> None:
    """log_dir: /tmp passed --check silently; another user then planted /tmp/w-0.out.log and
    every spawn of w:0 was refused (FATAL). --check says so beforehand."""
    from supervisor.config.checks import output_warnings

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    path = tmp_path / "logs.yaml"
    path.write_text(f"supervisor: {{log_dir: {shared}, socket: {tmp_path}/s.sock}}\n"
                    "workers:\n  w:\n    command: sleep 1\n")
    warnings = output_warnings(load_config(str(path)))
    assert warnings == [f"{path}: supervisor.log_dir: warning: every user can write {shared}: "
                        "any of them can put a file at a log file's name first, and the spawn "
                        "refuses it (the worker does not start); use a directory only root and "
                        "the worker's user can write"], warnings
    os.chmod(shared, 0o755)
    assert output_warnings(load_config(str(path))) == []
