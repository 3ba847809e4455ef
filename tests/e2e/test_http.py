"""The HTTP endpoint of a real supervisord: a real Prometheus scrapes /metrics, promtool checks
them, probes say what is missing, the API mirrors the control verbs behind the token, and the
restart counter survives a SIGKILL of the daemon."""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import DaemonFactory
from tests.support.http import bearer, free_port, make_token, request
from tests.support.wait import wait_until

PLAIN = {"command": "sleep 100000", "start_seconds": 0.2, "kill_timeout": 2}
LIB = {"command": "python3 -m worker", "start_seconds": 5, "graceful_timeout": 5}
# exits 3 after 0.3 s of running, over and over: restarts grow
CRASHY = {"command": ["sh", "-c", "sleep 0.3; exit 3"], "start_seconds": 0.1,
          "restart": "always", "crash_burst": 1000, "backoff": {"initial": 0.1, "max": 0.2}}


def _needs(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (bash .ci/setup --test installs Debian's "
                    "prometheus package; with CI=true this skip fails the run)")
    return path


def _metric(text: str, metric: str, **labels: str) -> float | None:
    """The value of the one sample named metric with these labels (prometheus_client's
    parser reads the text)."""
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == metric and sample.labels == labels:
                return float(sample.value)
    return None


def test_prometheus_scrapes_the_daemon(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    binary = _needs("prometheus")
    promtool = _needs("promtool")
    port = free_port()
    d = daemon_factory({"plain": {**PLAIN, "numprocs": 2}, "lib": LIB, "crashy": CRASHY},
                       supervisor={"http": f"127.0.0.1:{port}"}).start()
    d.wait_state("plain:1", "RUNNING")
    d.wait_state("lib:0", "RUNNING")
    text = request(port, "GET", "/metrics").text
    check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["pyvisor_instance_restarts"].type == "counter"
    assert {(s.labels["state"], s.value) for s in parsed["pyvisor_instance_state"].samples
            if s.labels["name"] == "plain:0"} == {
        ("RUNNING", 1.0), *((st, 0.0) for st in ("STOPPED", "STARTING", "BACKOFF", "STOPPING",
                                                 "EXITED", "FATAL"))}
    assert parsed["pyvisor_loop_lag_seconds"].type == "histogram"
    prom_port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "pyvisor", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}))
    out = open(tmp_path / "prometheus.out", "wb")  # noqa: SIM115 -- closed below
    prom = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path}/tsdb",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        def query(q: str) -> list[dict[str, Any]]:
            url = (f"http://127.0.0.1:{prom_port}/api/v1/query?"
                   + urllib.parse.urlencode({"query": q}))
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    doc = json.loads(r.read())
            except OSError:
                return []
            result: list[dict[str, Any]] = doc["data"]["result"]
            return result

        def value(q: str) -> float | None:
            rows = query(q)
            return float(rows[0]["value"][1]) if len(rows) == 1 else None

        running = 'pyvisor_worker_instances{worker="plain",state="RUNNING"}'
        assert wait_until(lambda: value(running), 60, f"Prometheus to have {running}",
                          ok=lambda v: v == 2.0) == 2.0
        states = query('pyvisor_instance_state{name="plain:0"}')
        assert {r["metric"]["state"]: float(r["value"][1]) for r in states} == {
            "STOPPED": 0, "STARTING": 0, "RUNNING": 1, "BACKOFF": 0, "STOPPING": 0,
            "EXITED": 0, "FATAL": 0}
        assert value('pyvisor_instance_work_done_total{name="lib:0"}') is not None
        assert value('pyvisor_instance_memory_bytes{name="plain:0"}') > 0  # type: ignore[operator]
        wait_until(lambda: value('pyvisor_instance_restarts_total{name="crashy:0"}'), 60,
                   "a restart of crashy:0 to be scraped", ok=lambda v: v is not None and v >= 2)
        wait_until(lambda: value('pyvisor_instance_exits_total{name="crashy:0",'
                                 'reason="failure"}'), 30, "its exits to be scraped",
                   ok=lambda v: v is not None and v >= 2)
        assert value('pyvisor_http_requests_total{route="/metrics",code="200"}')
        up = value('up{job="pyvisor"}')
        assert up == 1.0
        for row in query('{__name__=~"pyvisor_.*"}'):
            assert "exported_instance" not in row["metric"], row
            labels = set(row["metric"]) - {"__name__", "job", "instance"}
            assert "pid" not in labels and not any("time" in k for k in labels), row
    finally:
        prom.kill()
        prom.wait(10)
        out.close()


def test_probes_say_what_is_missing(daemon_factory: DaemonFactory) -> None:
    port = free_port()
    workers = {"plain": PLAIN, "broken": {"command": "false", "restart": "never",
                                          "start_seconds": 5}}
    d = daemon_factory(workers, supervisor={"http": f"127.0.0.1:{port}"}).start()
    live = request(port, "GET", "/livez")
    assert live.status == 200 and live.text.startswith("ok: the loop turns")
    d.wait_state("broken:0", "EXITED")
    d.wait_state("plain:0", "RUNNING")
    r = request(port, "GET", "/readyz")
    assert r.status == 503, r
    assert "broken:0 EXITED (exit status 1)" in r.text and "plain:0" not in r.text, r.text
    d.supervisor_extra["http_ready"] = ["plain"]
    d.write_config(workers)
    d.stop()
    d.start()
    d.wait_state("plain:0", "RUNNING")
    r = request(port, "GET", "/readyz")
    assert r.status == 200 and "1 instances RUNNING" in r.text, r


def test_readiness_is_answered_again_after_any_change(daemon_factory: DaemonFactory) -> None:
    """/readyz answers from its last answer for a while (a flood of probes reads every
    instance once), but a start is seen by the next probe, however soon it comes."""
    port = free_port()
    d = daemon_factory({"w": {**PLAIN, "start_seconds": 0, "autostart": False}},
                       supervisor={"http": f"127.0.0.1:{port}", "http_ready": ["w"]}).start()
    for _ in range(20):
        r = request(port, "GET", "/readyz")
        assert r.status == 503 and "w:0 STOPPED" in r.text, r
    assert d.ctl("start", "w").returncode == 0
    r = request(port, "GET", "/readyz")
    assert r.status == 200 and "1 instances RUNNING" in r.text, r


def test_api_status_is_supervisorctl_status(daemon_factory: DaemonFactory) -> None:
    port = free_port()
    d = daemon_factory({"plain": {**PLAIN, "numprocs": 2}},
                       supervisor={"http": f"127.0.0.1:{port}"}).start()
    d.wait_state("plain:1", "RUNNING")
    rows = request(port, "GET", "/api/v1/status").json()["data"]
    ctl = d.status_json()
    assert [(r["name"], r["state"], r["pid"]) for r in rows] == [
        (r["name"], r["state"], r["pid"]) for r in ctl]
    one = request(port, "GET", "/api/v1/instances/plain:1")
    assert one.status == 200 and [r["name"] for r in one.json()["data"]] == ["plain:1"]
    missing = request(port, "GET", "/api/v1/instances/nope")
    assert missing.status == 404 and "no such worker: nope" in missing.json()["err"]
    spec = request(port, "GET", "/api/v1/openapi.json").json()
    assert "/api/v1/instances/{name}/stop" in spec["paths"]


def test_control_needs_the_token(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    port = free_port()
    token_path, token = make_token(tmp_path)
    d = daemon_factory({"lib": LIB}, supervisor={"http": f"127.0.0.1:{port}",
                                                 "http_token_file": token_path}).start()
    d.wait_state("lib:0", "RUNNING")
    stop = "/api/v1/instances/lib:0/stop?graceful=1"
    none = request(port, "POST", stop)
    assert none.status == 401 and "Authorization: Bearer" in none.json()["err"], none
    assert none.headers["www-authenticate"].startswith("Bearer")
    wrong = request(port, "POST", stop, bearer(token[:-1] + b"x"))
    assert wrong.status == 403 and "wrong token" in wrong.json()["err"], wrong
    cookie = request(port, "POST", stop, {"Cookie": f"token={token.decode()}"})
    assert cookie.status == 401, "a cookie never carries the token"
    assert d.status_of("lib:0")["state"] == "RUNNING"
    ok = request(port, "POST", stop, bearer(token))
    assert ok.status == 200 and ok.json()["out"] == "lib:0: stopped\n", ok
    assert d.status_of("lib:0")["state"] == "STOPPED"
    d.wait_log(r"lib:0 RUNNING -> STOPPING \(stop requested; graceful")
    started = request(port, "POST", "/api/v1/instances/lib/start", bearer(token))
    assert started.status == 200 and started.json()["out"] == "lib:0: started\n", started
    sig = request(port, "POST", "/api/v1/instances/lib:0/signal?signal=CONT", bearer(token))
    assert sig.status == 200 and sig.json()["out"] == "lib:0: sent SIGCONT\n", sig
    bad = request(port, "POST", "/api/v1/instances/lib:0/stop?graceful=maybe", bearer(token))
    assert bad.status == 400 and "1 or 0" in bad.json()["err"]
    unknown = request(port, "POST", "/api/v1/instances/lib:0/stop?force=1", bearer(token))
    assert unknown.status == 400 and "takes no option 'force'" in unknown.json()["err"]
    nope = request(port, "POST", "/api/v1/instances/nope/restart", bearer(token))
    assert nope.status == 404


def test_control_over_tcp_without_a_token_file_is_refused(daemon_factory: DaemonFactory) -> None:
    port = free_port()
    d = daemon_factory({"plain": PLAIN}, supervisor={"http": f"127.0.0.1:{port}"}).start()
    d.wait_state("plain:0", "RUNNING")
    r = request(port, "POST", "/api/v1/instances/plain:0/stop", {"Authorization": "Bearer x"})
    assert r.status == 403 and "http_token_file" in r.json()["err"], r
    assert d.status_of("plain:0")["state"] == "RUNNING"


def test_restart_counter_survives_a_daemon_sigkill(daemon_factory: DaemonFactory) -> None:
    port = free_port()
    d = daemon_factory({"crashy": {**CRASHY, "command": ["sh", "-c", "sleep 0.3; exit 3"]},
                        "plain": PLAIN}, supervisor={"http": f"127.0.0.1:{port}"}).start()

    def restarts() -> float | None:
        try:
            text = request(port, "GET", "/metrics", timeout=5).text
        except OSError:
            return None
        return _metric(text, "pyvisor_instance_restarts_total", name="crashy:0",
                       worker="crashy")

    wait_until(restarts, 30, "crashy:0 restarted 3 times", ok=lambda v: v is not None and v >= 3)
    d.ctl("stop", "crashy")          # a steady count to compare
    row = d.status_of("crashy:0")
    assert row["restarts"] >= 3
    # /metrics is rendered at most once a second: wait for a render after the stop
    before = wait_until(restarts, 10, "/metrics to show the status row's count",
                        ok=lambda v: v == row["restarts"])
    plain_pid = d.status_of("plain:0")["pid"]
    d.kill(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait(10)
    d.start()
    assert d.wait_state("plain:0", "RUNNING")["pid"] == plain_pid
    assert wait_until(restarts, 20, "the new daemon's restart count",
                      ok=lambda v: v is not None) == before
    text = request(port, "GET", "/metrics").text
    assert _metric(text, "pyvisor_adoptions_total", outcome="adopted") == 1.0
    # and across a re-exec (the re-exec state), with the endpoint back on the same port
    mark = d.log_mark()
    assert d.ctl("reexec").returncode == 0
    d.wait_log(rf"http: listening on 127\.0\.0\.1:{port}\b", after=mark)
    assert wait_until(restarts, 20, "the re-executed daemon's restart count",
                      ok=lambda v: v is not None) == before
    assert d.proc is not None and d.proc.poll() is None


def test_a_rotated_token_works_after_reload(daemon_factory: DaemonFactory,
                                            tmp_path: Path) -> None:
    port = free_port()
    token_path, old = make_token(tmp_path)
    d = daemon_factory({"plain": PLAIN}, supervisor={"http": f"127.0.0.1:{port}",
                                                     "http_token_file": token_path}).start()
    d.wait_state("plain:0", "RUNNING")
    sig = "/api/v1/instances/plain:0/signal?signal=CONT"
    assert request(port, "POST", sig, bearer(old)).status == 200
    new = secrets.token_urlsafe(32).encode()
    Path(token_path).write_bytes(new + b"\n")
    r = d.ctl("reload")
    assert r.returncode == 0, r
    d.wait_log(r"http: token reloaded")
    assert request(port, "POST", sig, bearer(old)).status == 403
    assert request(port, "POST", sig, bearer(new)).status == 200
