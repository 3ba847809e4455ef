"""A real headless Chromium for the status page's tests: Debian's chromium driven through
chromedriver by Selenium, never anything downloaded (the driver's path is given, so Selenium
does not look for one). A missing browser is a skip, which tests/conftest.py makes a failure
with CI=true.

``browser()`` starts chromedriver and the browser with a temporary profile and, however the
test ends, quits them, ends every process of theirs that is left (by PID: the driver and the
processes under it, collected while they run) and removes the profile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"



def _need() -> None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (bash .ci/setup --test installs the test extra; "
                 "with CI=true this is a failure)")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} is missing (bash .ci/setup --test installs Debian's {package}; "
                     "with CI=true this is a failure)")


def _tree(pid: int) -> set[int]:
    try:
        p = psutil.Process(pid)
        return {pid, *(c.pid for c in p.children(recursive=True))}
    except psutil.Error:
        return set()


def _end(pids: set[int], started: dict[int, float]) -> None:
    """SIGKILL each pid that is still the process we saw (same start time)."""
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if started.get(pid) == p.create_time():
                p.kill()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(10)


@contextlib.contextmanager
def browser(width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A selenium webdriver.Chrome (typed loosely: selenium is imported only when needed)."""
    _need()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pyvisor-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync",
                f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")   # Chromium refuses to run as root with its sandbox
    service = Service(executable_path=CHROMEDRIVER, log_output=os.devnull)
    pids: set[int] = set()
    started: dict[int, float] = {}

    def note() -> None:
        proc = getattr(service, "process", None)
        if proc is None:
            return
        for pid in _tree(proc.pid) - pids:
            with contextlib.suppress(psutil.Error):
                started[pid] = psutil.Process(pid).create_time()
                pids.add(pid)

    driver = None
    try:
        try:
            driver = webdriver.Chrome(service=service, options=opts)
        finally:
            note()
        driver.set_script_timeout(30)
        yield driver
    finally:
        note()
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        with contextlib.suppress(Exception):
            service.stop()
        _end(pids, started)
        shutil.rmtree(profile, ignore_errors=True)
