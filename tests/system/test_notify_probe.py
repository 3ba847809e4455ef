"""supervisor.sdnotify under a real systemd 252: a tiny Type=notify service built on it.

Independent of the daemon: it checks the notify protocol and the nspawn harness itself
(start blocks until READY=1, STATUS=, the watchdog, RELOADING=1/READY=1, STOPPING=1).
"""

from __future__ import annotations

import time

from tests.system import nspawn

UNIT = "sdprobe.service"
PROBE = r'''
import os, signal, sys, time
from supervisor.sdnotify import Notifier

n = Notifier.from_env()
log = open("/var/tmp/sdprobe.log", "a", buffering=1)
reloads = 0

def on_hup(*_):
    global reloads
    reloads += 1
    n.reloading()
    log.write(f"pid={os.getpid()} reload {reloads}\n")
    n.ready(f"reloaded {reloads}")

def on_term(*_):
    n.stopping()
    log.write(f"pid={os.getpid()} SIGTERM\n")
    sys.exit(0)

signal.signal(signal.SIGHUP, on_hup)
signal.signal(signal.SIGTERM, on_term)
log.write(f"pid={os.getpid()} start interval={n.watchdog_interval()}\n")
time.sleep(1.0)                      # `systemctl start` must block on this
n.ready("serving")
interval = n.watchdog_interval() or 1.0
while True:
    if os.path.exists("/var/tmp/sdprobe-hang"):
        os.unlink("/var/tmp/sdprobe-hang")
        log.write(f"pid={os.getpid()} hanging\n")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP})
        while True:
            time.sleep(3600)
    n.watchdog()
    time.sleep(interval)
'''

UNIT_TEXT = """[Unit]
Description=sdnotify probe

[Service]
Type=notify
NotifyAccess=main
ExecStart=/opt/pyvisor/bin/python /opt/sdprobe/probe.py
ExecReload=/bin/kill -HUP $MAINPID
WatchdogSec=2s
TimeoutAbortSec=2s
Restart=on-failure
RestartSec=0.5s
TimeoutStartSec=20s
TimeoutStopSec=5s
"""


def test_notify_protocol_under_real_systemd(container: nspawn.Container) -> None:
    c = container
    c.write("/opt/sdprobe/probe.py", PROBE)
    c.write(f"/etc/systemd/system/{UNIT}", UNIT_TEXT)
    c.ct("systemctl", "daemon-reload", check=True)

    def show() -> str:
        return c.journal(UNIT, 60)

    t0 = time.monotonic()
    start = c.ct("systemctl", "start", UNIT, timeout=30)
    took = time.monotonic() - t0
    assert start.returncode == 0, f"{start.stderr}\n{show()}"
    assert took >= 1.0, f"systemctl start returned after {took:.2f}s, before READY=1"
    assert c.prop(UNIT, "ActiveState") == "active", show()
    assert c.prop(UNIT, "StatusText") == "serving", show()
    assert c.prop(UNIT, "WatchdogUSec") == "2s"
    pid1 = c.prop(UNIT, "MainPID")
    log = c.ct("cat", "/var/tmp/sdprobe.log").stdout
    assert f"pid={pid1} start interval=1.0" in log, log

    # the pings keep it alive past several watchdog periods
    c.wait_for("uptime past 2 watchdog periods",
               lambda: time.monotonic() - t0 > 5.0 and c.prop(UNIT, "MainPID") == pid1,
               timeout=10, show=show)
    assert c.prop(UNIT, "NRestarts") == "0", show()

    rel = c.ct("systemctl", "reload", UNIT)
    assert rel.returncode == 0, rel.stderr
    c.wait_for("STATUS after reload", lambda: c.prop(UNIT, "StatusText") == "reloaded 1",
               timeout=10, show=show)
    assert c.prop(UNIT, "ActiveState") == "active"

    # hang: no more WATCHDOG=1 -> SIGABRT (blocked? no: only TERM/HUP are) -> restart
    c.write("/var/tmp/sdprobe-hang", "")
    c.wait_for("watchdog restart",
               lambda: c.prop(UNIT, "NRestarts") == "1" and c.prop(UNIT, "MainPID") not in
               ("0", pid1) and c.prop(UNIT, "ActiveState") == "active",
               timeout=20, show=show)
    assert "Watchdog timeout" in c.journal(UNIT, 200), show()

    pid2 = c.prop(UNIT, "MainPID")
    stop = c.ct("systemctl", "stop", UNIT, timeout=30)
    assert stop.returncode == 0, stop.stderr
    assert c.prop(UNIT, "ActiveState") == "inactive"
    assert f"pid={pid2} SIGTERM" in c.ct("cat", "/var/tmp/sdprobe.log").stdout
