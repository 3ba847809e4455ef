"""A model-based chaos test (issue 11): random sequences of operator actions, worker crashes,
reloads, daemon SIGKILLs and re-execs against a real daemon, checked against a model of what
the operator asked for. After every step, once things settle:

- no instance has two processes;
- no process the daemon started is left unsupervised (every live worker is one status shows);
- every instance is RUNNING if the operator's last wish (or, with none, autostart) was
  "started", and STOPPED if it was "stopped".

Bounded for CI (a few examples of a few steps); PYVISOR_CHAOS_EXAMPLES=50 and
PYVISOR_CHAOS_STEPS=30 make a longer run. Hypothesis prints the failing sequence of steps and
how to replay it.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.support.daemon import DaemonProcess, pids_with_block_prefix
from tests.support.wait import wait_until

PLAIN = {"command": "sleep 100000", "start_seconds": 0.1, "kill_timeout": 2,
         "restart": "on-failure"}
INSTANCES = ("a:0", "a:1", "b:0")
SETTLE = 20.0


def workers(flavour: int) -> dict[str, dict[str, object]]:
    return {"a": {**PLAIN, "numprocs": 2, "environment": {"FLAVOUR": str(flavour)}},
            "b": {**PLAIN, "autostart": False}}


class Chaos(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="pvchaos-"))
        self.flavour = 0
        self.d = DaemonProcess(self.dir, workers(self.flavour))
        self.d.start()
        self.wanted = {"a:0": True, "a:1": True, "b:0": False}

    def teardown(self) -> None:
        try:
            left = self.d.cleanup()
            assert not [x for x in left if "was still running" in x], left
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the operator ---------------------------------------------------------------------
    @rule(which=st.sampled_from(INSTANCES + ("a", "all")))
    def start(self, which: str) -> None:
        self.d.ctl("start", which)
        self._set(which, True)

    @rule(which=st.sampled_from(INSTANCES + ("a", "all")), graceful=st.booleans())
    def stop(self, which: str, graceful: bool) -> None:
        self.d.ctl("stop", *(["--graceful"] if graceful else []), which)
        self._set(which, False)

    @rule(which=st.sampled_from(INSTANCES))
    def restart(self, which: str) -> None:
        self.d.ctl("restart", which)
        self._set(which, True)

    @rule()
    def reload_changed(self) -> None:
        self.flavour += 1
        self.d.write_config(workers(self.flavour))
        self.d.ctl("reload")

    # -- the world ------------------------------------------------------------------------
    @rule(which=st.sampled_from(INSTANCES))
    def crash_worker(self, which: str) -> None:
        pid = self.d.status_of(which)["pid"]
        if pid:
            os.kill(pid, signal.SIGKILL)       # a failure: restart=on-failure starts it again

    @rule()
    def sigkill_daemon(self) -> None:
        self.d.kill(signal.SIGKILL)
        assert self.d.proc is not None
        self.d.proc.wait(10)
        self.d.start()

    @rule()
    def reexec(self) -> None:
        mark = self.d.log_mark()
        self.d.ctl("reexec")
        self.d.wait_log(r"supervisord \d+ running", after=mark, timeout=30)

    # -- the invariants -------------------------------------------------------------------
    @invariant()
    def settled_as_asked(self) -> None:
        def matches() -> dict[str, str] | None:
            rows = {r["name"]: r for r in self.d.status_json()}
            states = {n: rows[n]["state"] for n in INSTANCES if n in rows}
            ok = all(states.get(n) == ("RUNNING" if up else "STOPPED")
                     for n, up in self.wanted.items())
            return states if ok else None
        wait_until(matches, SETTLE, f"states as asked: {self.wanted}")

    @invariant()
    def one_process_each_and_all_supervised(self) -> None:
        rows = self.d.status_json()
        managed = {r["pid"] for r in rows if r["pid"]}
        live = set(pids_with_block_prefix(self.d.prefix))
        assert live <= managed, f"unsupervised workers: {sorted(live - managed)}"
        per = Counter(r["name"] for r in rows if r["pid"])
        assert all(v == 1 for v in per.values()), per
        assert len(managed) == sum(1 for r in rows if r["pid"])

    def _set(self, target: str, up: bool) -> None:
        for name in self.wanted:
            if target in ("all", name) or name.startswith(target + ":"):
                self.wanted[name] = up


Chaos.TestCase.settings = settings(
    max_examples=int(os.environ.get("PYVISOR_CHAOS_EXAMPLES", "3")),
    stateful_step_count=int(os.environ.get("PYVISOR_CHAOS_STEPS", "6")),
    deadline=None, derandomize=False, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestChaos = Chaos.TestCase
