"""The status page at / in a real headless Chromium (Debian's chromium and chromium-driver,
through Selenium) against a real supervisord: every instance in the table, a state change
arriving live without a reload, a stop button that works with the token, no button without
it (and the API refusing), and a worker's hostile status text shown as text. Plus what the
server sends for the page's files (types, CSP, nosniff, nothing inline) over plain HTTP."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import browser
from tests.support.daemon import DaemonFactory, DaemonProcess, write_script
from tests.support.http import bearer, free_port, make_token, request
from tests.support.wait import wait_until

PLAIN = {"command": "sleep 100000", "start_seconds": 0.2, "kill_timeout": 2}
LIB = {"command": "python3 -m worker", "start_seconds": 5, "graceful_timeout": 5}
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
HOSTILE = f"""\
from worker import Worker

with Worker() as w:
    w.status({XSS!r})
    w.ready()
    print("published", flush=True)
    w.wait_for_stop()
"""


def css(driver: Any, selector: str) -> list[Any]:
    found: list[Any] = driver.find_elements("css selector", selector)
    return found


def cell(driver: Any, name: str, column: str) -> str:
    text: str = driver.find_element("css selector", f'tr[data-name="{name}"] td.c-{column}').text
    return text


@pytest.fixture
def page(daemon_factory: DaemonFactory, tmp_path: Path) -> Iterator[tuple[DaemonProcess, int,
                                                                          bytes, Any]]:
    port = free_port()
    token_path, token = make_token(tmp_path)
    script = write_script(tmp_path, "hostile.py", HOSTILE)
    d = daemon_factory({"plain": {**PLAIN, "numprocs": 3}, "lib": LIB,
                        "hostile": {"command": [sys.executable, script], "graceful_timeout": 5}},
                       supervisor={"http": f"127.0.0.1:{port}",
                                   "http_token_file": token_path}).start()
    for name in ("plain:2", "lib:0", "hostile:0"):
        d.wait_state(name, "RUNNING")
    wait_until(lambda: "published" in (d.log_dir / "hostile-0.out.log").read_text(), 10,
               "the hostile worker published")
    with browser() as driver:
        driver.get(f"http://127.0.0.1:{port}/")
        wait_until(lambda: len(css(driver, "#rows tr")), 20, "the table to fill",
                   ok=lambda n: n == 5)
        yield d, port, token, driver


def test_table_shows_every_instance_and_changes_arrive_live(
        page: tuple[DaemonProcess, int, bytes, Any]) -> None:
    d, port, _token, driver = page
    names = [e.text for e in css(driver, "td.c-name")]
    assert names == [r["name"] for r in d.status_json()], names
    for r in d.status_json():
        assert cell(driver, r["name"], "state") == "RUNNING"
        assert cell(driver, r["name"], "pid") == str(r["pid"])
    assert wait_until(lambda: driver.find_element("id", "conn").text, 10, "the stream live",
                      ok=lambda t: t == "live")
    assert re.fullmatch(r"\d+\.\ds ago", cell(driver, "lib:0", "hb")), cell(driver, "lib:0", "hb")
    badge = driver.find_element("css selector", 'tr[data-name="plain:1"] .state')
    assert "state-RUNNING" in badge.get_attribute("class")
    driver.execute_script("window.__sameDocument = true;")
    assert d.ctl("stop", "plain:1").returncode == 0
    wait_until(lambda: cell(driver, "plain:1", "state"), 10, "plain:1 STOPPED on the page",
               ok=lambda s: s == "STOPPED")
    assert "state-STOPPED" in badge.get_attribute("class")
    wait_until(lambda: cell(driver, "plain:1", "pid"), 10, "no pid for plain:1",
               ok=lambda p: p == "–")
    assert driver.execute_script("return window.__sameDocument") is True, "the page reloaded"
    events = [e.text for e in css(driver, "#events li")]
    assert any("plain:1 state RUNNING → STOPPING" in e for e in events), events
    assert d.ctl("start", "plain:1").returncode == 0
    wait_until(lambda: cell(driver, "plain:1", "state"), 10, "plain:1 RUNNING again",
               ok=lambda s: s == "RUNNING")
    pid = str(d.status_of("plain:1")["pid"])
    wait_until(lambda: cell(driver, "plain:1", "pid"), 10, "the new pid", ok=lambda p: p == pid)


def test_without_the_token_no_button_and_the_api_refuses(
        page: tuple[DaemonProcess, int, bytes, Any]) -> None:
    d, _port, _token, driver = page
    assert css(driver, "button.act") == []
    assert not driver.find_element("id", "actions-head").is_displayed()
    status = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('api/v1/instances/plain:0/stop', {method: 'POST'})"
        ".then(r => done(r.status), e => done(String(e)));")
    assert status == 401, status
    assert d.status_of("plain:0")["state"] == "RUNNING"


def test_stop_button_with_the_token(page: tuple[DaemonProcess, int, bytes, Any]) -> None:
    d, _port, token, driver = page
    driver.find_element("id", "token").send_keys(token.decode())
    driver.find_element("id", "token-use").click()
    stop = wait_until(lambda: driver.find_element(
        "css selector", 'tr[data-name="lib:0"] button.act-stop'), 10, "the stop button")
    assert driver.find_element("id", "token").get_attribute("value") == ""
    assert len(css(driver, "button.act")) == 3 * 5
    stop.click()
    wait_until(lambda: d.status_of("lib:0")["state"], 20, "lib:0 stopped by the button",
               ok=lambda s: s == "STOPPED")
    wait_until(lambda: cell(driver, "lib:0", "state"), 10, "the page shows it",
               ok=lambda s: s == "STOPPED")
    assert wait_until(lambda: driver.find_element("id", "message").text, 10, "the reply",
                      ok=lambda t: "lib:0: stopped" in t)
    assert d.wait_log(r"lib:0 RUNNING -> STOPPING \(stop requested")
    # the token lives in this tab's sessionStorage: a reload keeps the buttons
    driver.refresh()
    wait_until(lambda: len(css(driver, "button.act-start")), 20, "buttons after a reload",
               ok=lambda n: n == 5)
    driver.find_element("id", "token-forget").click()
    assert css(driver, "button.act") == []
    assert driver.execute_script("return sessionStorage.length") == 0


def test_hostile_status_text_is_shown_as_text(
        page: tuple[DaemonProcess, int, bytes, Any]) -> None:
    d, _port, _token, driver = page
    wait_until(lambda: cell(driver, "hostile:0", "text"), 10, "the status text",
               ok=lambda t: t == XSS)
    assert driver.execute_script("return document.querySelectorAll('img, tbody script')"
                                 ".length") == 0
    assert driver.execute_script("return window.__xss") is None
    assert d.status_of("hostile:0")["status_text"] == XSS


def test_page_files_types_and_headers(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    port = free_port()
    token_path, token = make_token(tmp_path)
    daemon_factory({"plain": PLAIN}, supervisor={"http": f"127.0.0.1:{port}",
                                                 "http_token_file": token_path}).start()
    want = {"/": "text/html; charset=utf-8", "/static/app.js": "text/javascript; charset=utf-8",
            "/static/style.css": "text/css; charset=utf-8"}
    for path, ctype in want.items():
        r = request(port, "GET", path)
        assert r.status == 200 and r.headers["content-type"] == ctype, (path, r)
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    html = request(port, "GET", "/").text
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts == ['<script src="static/app.js" defer>'], scripts
    assert re.search(r"<[^>]*\s(on[a-z]+|style)\s*=", html) is None, "no inline handler/style"
    assert "innerHTML" not in request(port, "GET", "/static/app.js").text
    spec = request(port, "GET", "/api/v1/openapi.json").json()
    assert {"/", "/static/{file}", "/api/v1/events"} <= set(spec["paths"])
    for bad in ("/static/index.html", "/static/../pyvisor.yaml", "/static/app.js%00",
                "/static/openapi.json", "/static/%2e%2e%2fserver.py"):
        assert request(port, "GET", bad).status in (400, 404), bad
    # another origin's page cannot drive the API, even with the token
    evil = request(port, "POST", "/api/v1/instances/plain:0/stop",
                   {**bearer(token), "Origin": "http://evil.example"})
    assert evil.status == 403 and "cross-origin" in evil.json()["err"], evil
    same = request(port, "POST", "/api/v1/instances/plain:0/restart",
                   {**bearer(token), "Origin": f"http://127.0.0.1:{port}"})
    assert same.status == 200, same
