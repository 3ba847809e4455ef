"""The converter's rules one at a time, on small files written in tmp_path: supervisord's
reading rules (comments, %(...)s expansion, includes, environments), the mapping of each
option, the notes, and the errors (exit 2, naming file and line)."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from supervisor.config import Config, ConfigError, load_config
from supervisor.convert import ConvertError, convert
from supervisor.daemon import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Notes and errors name files as given: write and convert relative names in tmp_path."""
    monkeypatch.chdir(tmp_path)


def write(text: str, name: str = "supervisord.conf") -> str:
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    Path(name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return name


def conv(text: str, environ: dict[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    out, notes = convert(write(text), environ=environ or {}, hostname="box")
    assert out.startswith("# pyvisor config converted by `supervisord --convert` from:\n"
                          "#   supervisord.conf\n")
    return yaml.safe_load(out), notes


def worker(text: str, environ: dict[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    data, notes = conv(text, environ)
    (only,) = data["workers"].values()
    return only, notes


def errors(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConvertError) as info:
        convert(write(text), environ=environ or {}, hostname="box")
    return info.value.lines


def loads(data: dict[str, Any]) -> Config:
    Path("out.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_config("out.yaml")


def test_inline_comments_need_whitespace_before_them() -> None:
    w, _ = worker("""
        [program:a]
        command=/bin/echo a;b c#d ; a comment
        """)
    assert w["command"] == ["sh", "-c", "/bin/echo a;b c#d"]
    w, _ = worker("""
        [program:a]
        command=/bin/echo x   # a comment
        """)
    assert w["command"] == "/bin/echo x"


def test_environment_with_quoted_commas() -> None:
    w, notes = worker("""
        [program:a]
        command=/bin/true
        environment=A="x,y",B='p q',C=plain,D="",URL="redis://r:6379/0"
        """)
    assert w["environment"] == {"A": "x,y", "B": "p q", "C": "plain", "D": "",
                                "URL": "redis://r:6379/0"}
    assert [n for n in notes if "environment" in n] == []
    loads({"workers": {"a": w}})


def test_environment_that_supervisord_cannot_split() -> None:
    assert errors("""
        [program:a]
        command=/bin/true
        environment=A=1,B
        """) == ["supervisord.conf:3: [program:a] environment: not KEY=value pairs separated by "
                 "commas near 'B'; quote values with spaces or other punctuation (got "
                 "'A=1,B')"]


def test_env_names_are_expanded_from_the_conversion_environment() -> None:
    w, notes = worker("""
        [program:a]
        command=/srv/run --workers %(ENV_WORKERS)s
        environment=PATH="/opt/bin:%(ENV_PATH)s"
        """, environ={"WORKERS": "4", "PATH": "/usr/bin"})
    assert w["command"] == "/srv/run --workers 4"
    assert w["environment"] == {"PATH": "/opt/bin:/usr/bin"}
    said = ("expanded from the environment of this conversion; pyvisor does not expand "
            "variables, so the file holds today's value (convert where it will run, or edit it)")
    assert f"supervisord.conf: [program:a] environment: %(ENV_PATH)s {said}" in notes
    assert f"supervisord.conf: [program:a] command: %(ENV_WORKERS)s {said}" in notes


def test_an_unset_env_name_is_an_error_naming_the_line() -> None:
    assert errors("""
        [program:a]

        command=/srv/run %(ENV_NOPE)s
        """) == ["supervisord.conf:3: [program:a] command: %(ENV_NOPE)s: the environment "
                 "variable NOPE is not set here; supervisord refuses the file without it too, "
                 "so set it and convert again"]


def test_env_names_from_the_file_itself_need_no_note() -> None:
    data, notes = conv("""
        [supervisord]
        environment=APP=/srv/app,MODE=prod
        [program:a]
        command=%(ENV_APP)s/run %(ENV_LEVEL)s
        environment=MODE=dev,LEVEL=debug
        """)
    assert data["workers"]["a"]["command"] == "/srv/app/run debug"
    assert data["workers"]["a"]["environment"] == {"APP": "/srv/app", "MODE": "dev",
                                                   "LEVEL": "debug"}
    assert not [n for n in notes if "ENV_" in n]
    assert ("supervisord.conf: [supervisord] environment: carried into every worker's "
            "environment (pyvisor has no daemon-wide one); a worker's own environment wins"
            ) in notes


def test_here_is_the_directory_of_the_file_it_is_in(tmp_path: Path) -> None:
    write("""
        [program:b]
        command=%(here)s/run.sh
        """, "conf.d/b.conf")
    data, notes = conv("""
        [program:a]
        command=/bin/true
        directory=%(here)s
        [include]
        files = conf.d/*.conf
        """)
    assert data["workers"]["a"]["directory"] == str(tmp_path)
    assert data["workers"]["b"]["command"] == f"{tmp_path}/conf.d/run.sh"
    assert (f"supervisord.conf: [program:a] directory: %(here)s expanded to {tmp_path}, the "
            "directory of the file it is in") in notes
    assert (f"conf.d/b.conf: [program:b] command: %(here)s expanded to {tmp_path}/conf.d, the "
            "directory of the file it is in") in notes
    loads(data)


def test_here_without_includes(tmp_path: Path) -> None:
    w, notes = worker("[program:a]\ncommand=%(here)s/run\nstopasgroup=true\n")
    assert w["command"] == f"{tmp_path}/run"
    assert notes == [f"supervisord.conf: [program:a] command: %(here)s expanded to {tmp_path}, "
                     "the directory of the file it is in"]


def test_includes_are_globs_relative_to_the_including_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write("[program:two]\ncommand=/bin/two\n", "etc/conf.d/2.conf")
    write("[program:one]\ncommand=/bin/one\n", "etc/conf.d/1.conf")
    write("[program:x]\ncommand=/bin/x\n", "etc/extra.ini")
    write("""
        [include]
        files = conf.d/*.conf
            extra.ini
            missing/*.conf
        """, "etc/supervisord.conf")
    text, notes = convert("etc/supervisord.conf", environ={}, hostname="box")
    assert text.splitlines()[1:5] == ["#   etc/supervisord.conf", "#   etc/conf.d/1.conf",
                                      "#   etc/conf.d/2.conf", "#   etc/extra.ini"]
    assert list(yaml.safe_load(text)["workers"]) == ["one", "two", "x"]
    # Missing: a note, not an error. supervisord only warns, so a config it runs converts.
    assert [n for n in notes if "[include]" in n] == [
        "etc/supervisord.conf: [include] files: no file matches etc/missing/*.conf; nothing "
        "included from it (supervisord only warns too)"]


def test_an_included_files_include_is_not_followed() -> None:
    write("[include]\nfiles = deeper.conf\n[program:b]\ncommand=/bin/b\n", "b.conf")
    write("[program:c]\ncommand=/bin/c\n", "deeper.conf")
    data, notes = conv("[include]\nfiles = b.conf\n")
    assert list(data["workers"]) == ["b"]
    assert notes[0] == ("b.conf: [include]: not followed: supervisord follows only the main "
                        "file's [include]")


@pytest.mark.parametrize(("value", "restart"), [
    ("true", "always"), ("Yes", "always"), ("1", "always"), ("on", "always"),
    ("false", "never"), ("off", "never"), ("0", "never"), ("unexpected", "on-failure")])
def test_autorestart(value: str, restart: str) -> None:
    w, _ = worker(f"[program:a]\ncommand=/bin/true\nautorestart={value}\n")
    assert w["restart"] == restart


def test_a_nul_character_is_an_error_naming_its_line() -> None:
    assert errors("[program:a]\ncommand = sleep\0 1\n") == [
        "supervisord.conf:2: contains a NUL character (\\0), which no command, path or value "
        "can hold; remove it"]


@pytest.mark.parametrize("separator", ["\v", "\f", "\x1c", "\x85", "\u2028", "\r"])
def test_line_numbers_count_only_the_line_breaks_configparser_counts(separator: str) -> None:
    """configparser keeps these characters inside a value; an error further down still names
    the line it is on."""
    assert errors(f"[program:a]\ncommand = sleep 1{separator}\n[program:b]\ncommand = x\n"
                  "numprocs = q\n") == [
        "supervisord.conf:5: [program:b] numprocs: not a whole number (got 'q')"]


def test_a_program_called_all_gets_a_name_that_is_no_command_target() -> None:
    data, notes = conv("""
        [program:all]
        command = sleep 1
        """)
    assert list(data["workers"]) == ["_all"]
    assert "supervisord.conf: [program:all]: the worker is called _all: `all` names every " \
        "worker in pyvisor's commands" in notes, notes
    loads(data)


def test_autorestart_that_supervisord_refuses() -> None:
    assert errors("[program:a]\ncommand=/bin/true\nautorestart=sometimes\n") == [
        "supervisord.conf:3: [program:a] autorestart: not true, false or unexpected (got "
        "'sometimes')"]


def test_the_options_that_map_one_to_one() -> None:
    w, notes = worker("""
        [program:a]
        command=/bin/true
        autostart=false
        exitcodes=0,2
        startsecs=0
        startretries=10
        stopsignal=sigint
        stopwaitsecs=600
        priority=5
        user=root
        stdout_logfile_maxbytes=1MB
        stdout_logfile_backups=3
        stderr_logfile_maxbytes=0
        """)
    assert w == {"command": "/bin/true", "user": "root", "autostart": False,
                 "exit_codes": [0, 2], "start_seconds": 0, "start_retries": 10,
                 "stop_signal": "INT", "kill_timeout": 600, "priority": 5,
                 "stdout": {"max_bytes": "1MB", "backups": 3}, "stderr": {"max_bytes": 0}}
    loads({"workers": {"a": w}})


def test_supervisords_defaults_where_pyvisors_differ_are_written_out() -> None:
    w, _ = worker("[program:a]\ncommand=/bin/true\n")
    assert w == {"command": "/bin/true", "start_retries": 3, "kill_timeout": 10}


def test_stopasgroup_false_is_noted_because_pyvisor_signals_the_group() -> None:
    _, notes = worker("[program:a]\ncommand=/bin/true\nstopasgroup=false\n")
    assert notes == ["supervisord.conf: [program:a] stopasgroup: false: pyvisor sends "
                     "stop_signal and SIGKILL to the program's whole process group, not only "
                     "to its main process"]
    _, notes = worker("[program:a]\ncommand=/bin/true\nstopasgroup=true\n")
    assert notes == []


def test_redirect_stderr() -> None:
    w, notes = worker("""
        [program:a]
        command=/bin/true
        redirect_stderr=true
        stdout_logfile=/var/log/a.log
        stderr_logfile=/var/log/a.err
        stopasgroup=true
        """)
    assert w["stdout"] == {"path": "/var/log/a.log"}
    assert w["stderr"] == "stdout"
    assert notes == ["supervisord.conf: [program:a] stderr_logfile: not carried over: "
                     "redirect_stderr=true sends stderr into stdout's file (supervisord "
                     "ignores it too)"]


def test_syslog_goes_to_the_default_file() -> None:
    w, notes = worker("""
        [program:a]
        command=/bin/true
        stopasgroup=true
        stdout_logfile=syslog
        stdout_logfile_maxbytes=0
        """)
    assert "stdout" not in w
    assert notes == ["supervisord.conf: [program:a] stdout_logfile: not carried over: syslog: "
                     "pyvisor keeps a worker's output in a log file, never syslog; it goes to "
                     "the default log file (stdout_logfile_maxbytes dropped with it)"]


@pytest.mark.parametrize(("value", "stdout"), [
    ("NONE", None), ("off", None), ("/dev/null", None), ("/dev/stdout", "daemon"),
    ("/proc/1/fd/1", "daemon"), ("/dev/fd/1", "daemon")])
def test_logfiles_that_are_no_file(value: str, stdout: str | None) -> None:
    """NONE, off and /dev/null discard (stdout: null); the daemon's stdout is stdout: daemon;
    maxbytes=0 (what supervisord needs for them) goes silently."""
    w, notes = worker(f"""
        [program:a]
        command=/bin/true
        stopasgroup=true
        stdout_logfile={value}
        stdout_logfile_maxbytes=0
        """)
    assert w["stdout"] == stdout and "stderr" not in w, w
    assert notes == []


def test_daemon_streams_pair_up() -> None:
    data, notes = conv("""
        [program:a]
        command=/bin/true
        stopasgroup=true
        stdout_logfile=/dev/stdout
        stderr_logfile=/dev/stdout
        [program:b]
        command=/bin/true
        stopasgroup=true
        stdout_logfile=/dev/stderr
        stderr_logfile=/dev/stderr
        stderr_logfile_maxbytes=1MB
        [program:c]
        command=/bin/true
        stopasgroup=true
        stderr_logfile=/dev/stdout
        """)
    got = {n: (w.get("stdout"), w.get("stderr")) for n, w in data["workers"].items()}
    assert got == {"a": ("daemon", "stdout"), "b": ("daemon", "daemon"), "c": (None, "daemon")}
    assert notes == [
        "supervisord.conf: [program:b] stdout_logfile: to the daemon's stdout: pyvisor sends a "
        "worker's stdout to the daemon's stdout, not its stderr",
        "supervisord.conf: [program:b] stderr_logfile_maxbytes: not carried over: output that "
        "goes to no file is never rotated",
        "supervisord.conf: [program:c] stderr_logfile: to the daemon's stderr: pyvisor sends a "
        "worker's stderr to the daemon's stderr, or with stdout (stderr: stdout)"]


def test_auto_logfiles_go_to_childlogdir() -> None:
    data, _ = conv("""
        [supervisord]
        childlogdir=/var/log/supervisor
        loglevel=warn
        [program:a]
        command=/bin/true
        stdout_logfile=AUTO
        """)
    assert data["supervisor"] == {"log_dir": "/var/log/supervisor", "log_level": "WARNING"}
    assert "stdout" not in data["workers"]["a"]


def test_process_num_with_one_process_is_expanded() -> None:
    w, notes = worker("""
        [program:q]
        process_name=%(program_name)s_%(process_num)02d
        command=/srv/work --slot=%(process_num)02d --of=%(numprocs)d
        stdout_logfile=/tmp/logs/q_%(process_num)02d.log
        stopasgroup=true
        """)
    assert w["command"] == "/srv/work --slot=00 --of=1"
    assert w["stdout"] == {"path": "/tmp/logs/q_00.log"}
    assert notes == []


def test_process_num_with_several_processes() -> None:
    w, notes = worker("""
        [program:q]
        process_name=%(program_name)s_%(process_num)02d
        numprocs=3
        command=/srv/work --slot=%(process_num)02d --literal={index}
        environment=SLOT="%(process_num)d",OTHER="{name}"
        directory=/tmp/q%(process_num)d
        stdout_logfile=/tmp/logs/q_%(process_num)02d.log
        stopasgroup=true
        umask=027
        """)
    assert w["numprocs"] == 3
    assert w["command"] == "/srv/work --slot={index} --literal={{index}}"
    assert w["environment"] == {"SLOT": "{index}", "OTHER": "{{name}}"}
    assert w["directory"] == "/tmp/q%(process_num)d"
    assert w["umask"] == "027"
    assert w["stdout"] == {"path": "/tmp/logs/q_{index}.log"}
    assert notes == [
        "supervisord.conf: [program:q] command: %(process_num)02d became {index}, which is not "
        "zero-padded (0, 1, ... 10)",
        "supervisord.conf: [program:q] directory: %(process_num)d left as written: pyvisor has "
        "no {index} in directory, so all 3 instances get the same text",
        "supervisord.conf: [program:q] stdout_logfile: %(process_num)02d became {index}, which "
        "is not zero-padded: the first file is /tmp/logs/q_0.log"]
    cfg = loads({"workers": {"q": {**w, "directory": "/tmp"}}}).workers["q"]
    assert cfg.argv("q", 2) == ["/srv/work", "--slot=2", "--literal={index}"]
    assert cfg.env("q", 2) == {"SLOT": "2", "OTHER": "{name}"}
    assert cfg.umask == 0o27


def test_several_processes_never_share_a_log_file() -> None:
    w, notes = worker("""
        [program:q]
        process_name=%(program_name)s_%(process_num)d
        numprocs=2
        command=/bin/true
        stdout_logfile=/tmp/logs/queue.log
        stopasgroup=true
        """)
    assert w["stdout"] == {"path": "/tmp/logs/queue-{index}.log"}
    assert notes == [
        "supervisord.conf: [program:q] process_name: not carried over: pyvisor names the "
        "instances q:0 .. q:1",
        "supervisord.conf: [program:q] stdout_logfile: all 2 instances would write to "
        "/tmp/logs/queue.log; pyvisor gives each its own file: /tmp/logs/queue-{index}.log"]
    loads({"workers": {"q": w}})


def test_two_programs_never_share_a_log_file() -> None:
    data, notes = conv("""
        [program:a]
        command=/bin/true
        stdout_logfile=/tmp/logs/app.log
        stderr_logfile=/tmp/logs/app.log
        stopasgroup=true
        [program:b]
        command=/bin/true
        stdout_logfile=/tmp/logs/app.log
        stopasgroup=true
        """)
    assert data["workers"]["a"]["stdout"] == data["workers"]["a"]["stderr"] == {
        "path": "/tmp/logs/app.log"}
    assert "stdout" not in data["workers"]["b"]
    assert notes == ["supervisord.conf: [program:b] stdout_logfile: not carried over: "
                     "[program:a] stdout_logfile writes that file too, and pyvisor gives every "
                     "worker its own; this one goes to the default log file"]
    loads(data)


def test_braces_in_log_paths_are_kept_literal() -> None:
    w, _ = worker("[program:a]\ncommand=/bin/true\nstdout_logfile=/tmp/{x}.log\n")
    assert w["stdout"] == {"path": "/tmp/{{x}}.log"}


def test_shell_syntax_is_wrapped_in_sh() -> None:
    w, notes = worker("""
        [program:a]
        command=cd /srv && exec ./run >> /var/log/run.log 2>&1
        stopasgroup=true
        """)
    assert w["command"] == ["sh", "-c", "cd /srv && exec ./run >> /var/log/run.log 2>&1"]
    assert notes == ["supervisord.conf: [program:a] command: uses shell syntax (&&, >>, >&) but "
                     "no shell runs it (supervisord passed those to the program as arguments); "
                     "wrapped as [sh, -c, ...]"]
    loads({"workers": {"a": w}})


def test_quoted_shell_syntax_is_left_alone() -> None:
    w, notes = worker("""
        [program:a]
        command=bash -c "sleep 5 && exec x11vnc" --x='a|b' c\\;d
        stopasgroup=true
        """)
    assert w["command"] == "bash -c \"sleep 5 && exec x11vnc\" --x='a|b' c\\;d"
    assert notes == []


def test_continuation_lines_of_a_command_become_one_line() -> None:
    w, _ = worker("""
        [program:a]
        command=/srv/gunicorn
            --bind 0.0.0.0:8000
            app:wsgi
        """)
    assert w["command"] == "/srv/gunicorn --bind 0.0.0.0:8000 app:wsgi"


def test_program_and_group_names() -> None:
    data, notes = conv("""
        [group:g]
        programs=a
        priority=10
        [program:a]
        command=/srv/%(group_name)s/%(program_name)s --host=%(host_node_name)s
        stopasgroup=true
        """)
    assert data["workers"]["a"]["command"] == "/srv/g/a --host=box"
    assert notes == [
        "supervisord.conf: [group:g] programs: not carried over: pyvisor has no groups; "
        "workers are named on their own (supervisorctl start a)",
        "supervisord.conf: [group:g] priority: not carried over: pyvisor starts workers by "
        "their own priority (set it on each)"]


def test_a_group_naming_no_program_is_an_error() -> None:
    assert errors("[group:g]\nprograms=a,b\n[program:a]\ncommand=x\n") == [
        "supervisord.conf:2: [group:g] programs: names 'b', which is not a [program:x] "
        "(supervisord refuses this too)"]


def test_sections_pyvisor_has_no_place_for() -> None:
    _, notes = conv("""
        [inet_http_server]
        port=127.0.0.1:9001
        [eventlistener:crash]
        command=/bin/crashmail
        events=PROCESS_STATE
        [fcgi-program:php]
        command=/usr/bin/php-cgi
        socket=tcp://127.0.0.1:9000
        [something]
        x=1
        [program:a]
        command=/bin/true
        umask=022
        auto_start=true
        stopasgroup=true
        """)
    assert notes == [
        "supervisord.conf: [inet_http_server]: not carried over: TCP control is not supported; "
        "pyvisor is controlled over its Unix socket only (supervisorctl on the host, or over "
        "ssh)",
        "supervisord.conf: [eventlistener:crash]: not carried over: eventlisteners are not "
        "supported (pyvisor has no events); left out",
        "supervisord.conf: [fcgi-program:php]: not carried over: FastCGI programs are not "
        "supported (pyvisor opens no sockets for its workers); left out: run it as a "
        "[program:x] that opens its own socket",
        "supervisord.conf: [something]: not carried over: unknown section (supervisord ignores "
        "it too)",
        "supervisord.conf: [program:a] auto_start: not carried over: unknown option "
        "(supervisord ignores it too)"]


@pytest.mark.parametrize(("text", "message"), [
    ("[program:a]\ncommand=x\nthis line is wrong\n",
     "supervisord.conf:3: not a 'key = value' line, a [section] header or a comment (got "
     "'this line is wrong')"),
    ("command=x\n[program:a]\n",
     "supervisord.conf:1: the first setting comes before any [section] header (got "
     "'command=x')"),
    ("[program:a]\ncommand=x\nautostart=maybe\n",
     "supervisord.conf:3: [program:a] autostart: not a boolean (got 'maybe'); use true or "
     "false"),
    ("[program:a]\ncommand=x\nnumprocs=two\n",
     "supervisord.conf:3: [program:a] numprocs: not a whole number (got 'two')"),
    ("[program:a]\ncommand=x\nstopsignal=STAHP\n",
     "supervisord.conf:3: [program:a] stopsignal: not a signal name or number (got 'STAHP')"),
    ("[program:a]\ncommand=x\nexitcodes=0,256\n",
     "supervisord.conf:3: [program:a] exitcodes: not a list of exit codes from 0 to 255 (got "
     "'0,256')"),
    ("[program:a]\ncommand=x\nstdout_logfile_maxbytes=1.5MB\n",
     "supervisord.conf:3: [program:a] stdout_logfile_maxbytes: not a whole number (got "
     "'1.5')"),
    ("[program:a]\ncommand=run --done=100%\n",
     "supervisord.conf:2: [program:a] command: '%' at character 15 is not a %(name)s "
     "reference; write %% for a literal % (got 'run --done=100%')"),
    ("[program:a]\ncommand=run %(nope)s\n",
     "supervisord.conf:2: [program:a] command: %(nope)s: no such name here; the names are "
     "group_name, here, host_node_name, numprocs, process_num, program_name, ENV_<variable>"),
    ("[program:a]\ncommand=run 'unclosed\n",
     "supervisord.conf:2: [program:a] command: cannot split it: no closing quotation (got "
     "\"run 'unclosed\")"),
    ("[program:a]\nautostart=true\n",
     "supervisord.conf:1: [program:a]: no command= (supervisord refuses this too)"),
    ("[program:a]\ncommand=x\nstopasgroup=true\nkillasgroup=false\n",
     "supervisord.conf:4: [program:a] killasgroup: false with stopasgroup=true (supervisord "
     "refuses this too)"),
    ("[include]\n[program:a]\ncommand=x\n",
     "supervisord.conf:1: [include] has no files= setting (supervisord refuses this too)"),
])
def test_what_supervisord_refuses_is_an_error_naming_the_line(text: str, message: str) -> None:
    assert errors(text) == [message]


def test_the_cli_exits_2_without_a_traceback() -> None:
    write("[program:a]\ncommand=x\nautostart=maybe\n")
    runner = CliRunner()
    for args, message in [
            (["--convert", "supervisord.conf"], "supervisord.conf:3: [program:a] autostart: "
             "not a boolean (got 'maybe'); use true or false\n"),
            (["--convert", "nope.conf"], "nope.conf: cannot read the file: No such file or "
             "directory\n")]:
        result = runner.invoke(main, args)
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", message)
        assert isinstance(result.exception, SystemExit)


def test_the_converted_file_checks_with_supervisord(tmp_path: Path) -> None:
    os.mkdir("app")
    write(f"""
        [supervisord]
        childlogdir={tmp_path}/logs
        [program:web]
        command=/bin/sleep 1000
        directory={tmp_path}/app
        numprocs=2
        process_name=%(program_name)s_%(process_num)02d
        stdout_logfile={tmp_path}/logs/web_%(process_num)02d.log
        redirect_stderr=true
        """)
    runner = CliRunner()
    result = runner.invoke(main, ["--convert", "supervisord.conf"])
    assert result.exit_code == 0, result.output
    Path("app.yaml").write_text(result.stdout, encoding="utf-8")
    result = runner.invoke(main, ["-c", "app.yaml", "--check"])
    assert (result.exit_code, result.stdout) == (0, "app.yaml: OK (1 worker)\n")


def test_options_not_carried_over_get_one_note_not_an_expansion_note() -> None:
    _, notes = conv("""
        [supervisord]
        logfile=%(ENV_LOGS)s/supervisord.log
        nodaemon=false
        """, environ={"LOGS": "/var/log"})
    assert notes == [
        "supervisord.conf: [supervisord] logfile: not carried over: pyvisor logs to its stderr "
        "(the journal, under systemd)",
        "supervisord.conf: [supervisord] nodaemon: not carried over: pyvisor always runs in "
        "the foreground (under systemd, or with nohup ... &)"]


def test_negative_times_and_retries_become_0_with_a_note() -> None:
    # supervisord takes them (as 0); they were carried over as written, and the converted
    # file then failed --check ("must be ≥ 0").
    w, notes = worker("""
        [program:x]
        command = sleep 1
        startsecs = -1
        startretries = -2
        stopwaitsecs = -5
        stopasgroup = true
    """)
    assert (w["start_seconds"], w["start_retries"], w["kill_timeout"]) == (0, 0, 0), w
    assert notes == [f"supervisord.conf: [program:x] {o}: {v} carried over as 0 (supervisord "
                     "takes a negative value as 0; pyvisor refuses it)"
                     for o, v in (("startsecs", -1), ("startretries", -2), ("stopwaitsecs", -5))]
    loads({"workers": {"x": w}})


def test_negative_log_sizes_and_backups_become_0_with_a_note() -> None:
    # supervisord never rotates at a size <= 0 and keeps no backups below 0; the value was
    # carried over as written and the converted file failed --check.
    w, notes = worker("""
        [program:x]
        command = sleep 1
        stdout_logfile_maxbytes = -1
        stderr_logfile_backups = -3
        stopasgroup = true
    """)
    assert w["stdout"] == {"max_bytes": 0} and w["stderr"] == {"backups": 0}, w
    assert notes == [
        "supervisord.conf: [program:x] stdout_logfile_maxbytes: -1 carried over as 0 "
        "(supervisord takes a negative value as 0; pyvisor refuses it)",
        "supervisord.conf: [program:x] stderr_logfile_backups: -3 carried over as 0 "
        "(supervisord takes a negative value as 0; pyvisor refuses it)"]
    loads({"workers": {"x": w}})


def test_a_numprocs_past_pyvisors_bound_is_noted_and_converts_at_once() -> None:
    """numprocs=10**8 with a per-process log file built 10**8 file names (minutes and
    gigabytes, seen by fuzzing); it is carried over as written (--check refuses it) with a
    note, in the time a small file takes."""
    start = time.monotonic()
    w, notes = worker("""
        [program:x]
        command=sleep 1
        numprocs=100000000
        stdout_logfile=/var/log/x-%(process_num)d.log
        """)
    assert time.monotonic() - start < 5
    assert w["numprocs"] == 100000000
    assert w["stdout"] == {"path": "/var/log/x-{index}.log"}
    assert ("supervisord.conf: [program:x] numprocs: 100000000 carried over as written, but "
            "pyvisor runs at most 10000 instances of a worker: --check refuses the file until "
            "it is lowered (or the program is split into several workers)") in notes


def test_a_user_given_as_a_uid_converts_to_a_file_that_loads() -> None:
    """supervisord's user= takes a uid; the converter writes it as text (user: '0'), which
    load_config refused as 'no such user'. A text of digits is a uid after the name fails,
    for user: and group: alike."""
    w, _ = worker("""
        [program:x]
        command=sleep 1
        user=0
        """)
    assert w["user"] == "0"
    config = loads({"workers": {"x": w | {"group": "0"}}})
    assert (config.workers["x"].user, config.workers["x"].group) == ("root", "root")
    with pytest.raises(ConfigError, match=r"no such user on this machine \(got '99999999999'\)"):
        loads({"workers": {"x": w | {"user": "99999999999"}}})


# -- [include] bounded: files, entries looked at, bytes; never a FIFO or device ------------------
def _run_bounded(fn: Any, seconds: float = 20.0) -> Any:
    """fn() in a thread: a hang (a FIFO opened for reading) fails the test instead of holding
    it until the suite's timeout."""
    import threading
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 -- handed to the test
            out.append(e)
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (it blocks)"
    return out[0]


def test_an_include_glob_matching_too_many_files_names_the_line_and_the_limit() -> None:
    from supervisor.convert import includes
    Path("conf.d").mkdir()
    for i in range(includes.MAX_FILES + 1):
        Path(f"conf.d/{i}.conf").write_bytes(b"")
    assert errors("[program:a]\ncommand=/bin/a\n[include]\nfiles = conf.d/*.conf\n") == [
        f"supervisord.conf:4: [include] files: conf.d/*.conf matches more than "
        f"{includes.MAX_FILES} files (with the globs before it), the most the converter "
        "follows; name fewer files (e.g. conf.d/*.conf, not /**/*.conf)"]


def test_an_include_glob_that_walks_too_far_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """/*/*/*/*.conf matches little and looks at everything: bounded by the entries it looks
    at (a small bound here, the tree of tmp_path; the real one is 200,000)."""
    from supervisor.convert import includes
    monkeypatch.setattr(includes, "MAX_ENTRIES", 50)
    for i in range(30):
        Path(f"d{i}/e").mkdir(parents=True)
    lines = errors("[include]\nfiles = */*/*.conf\n")
    assert lines == ["supervisord.conf:2: [include] files: */*/*.conf looks at more than 50 "
                     "directory entries (with the globs before it), the most the converter "
                     "follows; name fewer files (e.g. conf.d/*.conf, not /**/*.conf)"]
    assert _run_bounded(lambda: errors("[include]\nfiles = /*/*/*/*/*.conf\n"))[0].endswith(
        "(e.g. conf.d/*.conf, not /**/*.conf)")


def test_included_files_are_bounded_in_bytes_together(monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.convert import includes
    monkeypatch.setattr(includes, "MAX_TOTAL_BYTES", 1000)
    for i in range(3):
        write(f"[program:p{i}]\ncommand=/bin/p\n" + "; padding\n" * 40, f"conf.d/{i}.conf")
    assert errors("[include]\nfiles = conf.d/*.conf\n") == [
        "supervisord.conf:2: [include] files: the files included come to more than 1000 bytes "
        "(at conf.d/2.conf), the most the converter reads; name fewer files"]


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/dev/null", "dir"])
def test_an_included_fifo_device_or_directory_is_refused_without_blocking(target: str) -> None:
    if target == "fifo":
        os.mkfifo("conf.d.fifo")
        target = "conf.d.fifo"
    elif target == "dir":
        Path("dir.conf").mkdir()
        target = "dir.conf"
    lines = _run_bounded(lambda: errors(f"[include]\nfiles = {target}\n"))
    assert lines == [f"{target}: not a regular file (a directory, FIFO, socket or device); a "
                     "config file is a file"]


def test_a_fifo_matched_by_an_include_glob_is_refused_without_blocking() -> None:
    write("[program:a]\ncommand=/bin/a\n", "conf.d/a.conf")
    os.mkfifo("conf.d/b.conf")
    lines = _run_bounded(lambda: errors("[include]\nfiles = conf.d/*.conf\n"))
    assert lines == ["conf.d/b.conf: not a regular file (a directory, FIFO, socket or device); "
                     "a config file is a file"]
