"""/metrics: the daemon's facts in the Prometheus text format (version 0.0.4).

Rules:

- the facts are the status rows (control.rows.status_facts), the same source as
  `supervisorctl status`; the counters are the core's (restarts, kept across daemon restarts)
  and the runtime's (exits by reason, adoption outcomes) and the loop's lag histogram;
- state is one 0/1 series per state (as systemd_exporter does), so `sum by (state)` and alerts on
  `== 1` work without parsing strings;
- per-worker aggregates always; per-instance series for the first ``max_instances`` instances
  by name (``pyvisor_metrics_instances_omitted`` says how many more there are), so 10,000
  instances cannot make a scrape unbounded;
- labels are the worker, the instance's name (``name``: "web:0"; not ``instance``, which
  Prometheus gives every target), and small closed sets (state, reason, outcome, route, code):
  never a pid or a time;
- what a worker publishes (worker.published) comes as ``pyvisor_worker_metric`` (its gauges)
  and ``pyvisor_worker_metric_total`` (its counters), labels worker, name and ``metric`` (the
  worker's own name for it): typed by the kind the worker gave it (a family has one type; the
  counter's ``_total`` keeps the two apart, and promtool accepts the pair), for the same capped
  instances only. The names are bounded and checked where they are read (at most 16 per
  instance, [A-Za-z0-9_] within the block's name size) and escaped like every label value.

The text is written here (``Family``), not with prometheus_client: its collector API and
generate_latest cost ~45 us per sample here (300 ms for 7,000 samples, measured), three
times the whole scrape budget at 1,000 instances. The tests parse every scrape with
prometheus_client's parser and check it with promtool, so the format stays theirs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from supervisor.control.rows import status_facts
from supervisor.core import State
from supervisor.loop import LAG_BUCKETS
from supervisor.runtime.runtime import EXIT_REASONS

if TYPE_CHECKING:
    from supervisor.http.server import HttpServer
    from supervisor.runtime import Instance, Runtime

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
STATES = [s.value for s in State]
ADOPTION_OUTCOMES = ("adopted", "exited_while_away", "unverifiable")


def _value(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(**kv: str) -> str:
    """'{k="v",...}' with the values escaped as the text format wants ('' when none)."""
    if not kv:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items()) + "}"


class Family:
    """One metric: its HELP and TYPE lines and its samples, as text."""

    __slots__ = ("name", "lines")

    def __init__(self, name: str, kind: str, doc: str) -> None:
        self.name = name
        doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines = [f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"]

    def add(self, label_text: str, value: float, suffix: str = "") -> None:
        self.lines.append(f"{self.name}{suffix}{label_text} {_value(value)}\n")

    def text(self) -> str:
        return "".join(self.lines)


class Families:
    """The instance and worker families of one scrape, filled row by row."""

    def __init__(self) -> None:
        def g(name: str, doc: str) -> Family:
            return Family(name, "gauge", doc)

        def c(name: str, doc: str) -> Family:
            return Family(name + "_total", "counter", doc)

        self.i_state = g("pyvisor_instance_state", "1 for the instance's current state, 0 for "
                         "the others")
        self.i_restarts = c("pyvisor_instance_restarts", "Respawns after an exit (restart "
                            "policy, backoff retries); kept across daemon restarts")
        self.i_exits = c("pyvisor_instance_exits", "Exits seen by this daemon, by reason "
                         "(success/failure per exit_codes, signal, unknown)")
        self.i_uptime = g("pyvisor_instance_uptime_seconds", "Seconds since the current "
                          "process started")
        self.i_hb = g("pyvisor_instance_heartbeat_age_seconds", "Seconds since the worker's "
                      "last heartbeat (workers that use the library)")
        self.i_work = c("pyvisor_instance_work_done", "Units of work the current process "
                        "reported")
        self.i_cpu = c("pyvisor_instance_cpu_seconds", "CPU seconds of the process tree (the "
                       "leader's without a cgroup)")
        self.i_mem = g("pyvisor_instance_memory_bytes", "Memory of the process tree (the "
                       "leader's RSS without a cgroup)")
        self.i_wcounter = c("pyvisor_worker_metric", "A counter the worker publishes (worker "
                            "API: w.counter(NAME)); per instance")
        self.i_wgauge = g("pyvisor_worker_metric", "A gauge the worker publishes (worker API: "
                          "w.gauge(NAME)); per instance")
        self.w_states = g("pyvisor_worker_instances", "Instances of the worker in each state")
        self.w_restarts = c("pyvisor_worker_restarts", "Respawns after an exit, all instances")
        self.w_exits = c("pyvisor_worker_exits", "Exits seen by this daemon, all instances, "
                         "by reason")
        self.w_hb = g("pyvisor_worker_heartbeat_age_max_seconds", "The oldest heartbeat of "
                      "the worker's instances")
        self.w_uptime = g("pyvisor_worker_uptime_min_seconds", "Uptime of the worker's "
                          "youngest running instance")
        self.w_work = c("pyvisor_worker_work_done", "Units of work reported by the current "
                        "processes, all instances")
        self.w_cpu = c("pyvisor_worker_cpu_seconds", "CPU seconds of the current process "
                       "trees, all instances")
        self.w_mem = g("pyvisor_worker_memory_bytes", "Memory of the current process trees, "
                       "all instances")

    def all(self) -> list[Family]:
        return [self.i_state, self.i_restarts, self.i_exits, self.i_uptime, self.i_hb,
                self.i_work, self.i_cpu, self.i_mem, self.i_wcounter, self.i_wgauge,
                self.w_states, self.w_restarts, self.w_exits, self.w_hb, self.w_uptime,
                self.w_work, self.w_cpu, self.w_mem]

    def instance(self, inst: Instance, f: dict[str, Any]) -> None:
        head = f'{{worker="{_escape(inst.worker)}",name="{_escape(inst.name)}"'
        lv = head + "}"
        state = f["state"]
        for s in STATES:
            self.i_state.add(f'{head},state="{s}"}}', 1 if s == state else 0)
        self.i_restarts.add(lv, inst.st.restarts)
        for reason in EXIT_REASONS:
            self.i_exits.add(f'{head},reason="{reason}"}}', inst.exits.get(reason, 0))
        for fam, key in ((self.i_uptime, "uptime"), (self.i_hb, "heartbeat_age"),
                         (self.i_work, "work_done"), (self.i_cpu, "cpu_seconds"),
                         (self.i_mem, "rss")):
            if f[key] is not None:
                fam.add(lv, f[key])
        for m in f.get("metrics", ()):
            fam = self.i_wcounter if m["kind"] == "counter" else self.i_wgauge
            fam.add(f'{head},metric="{_escape(m["name"])}"}}', m["value"])

    def worker(self, worker: str, rows: list[tuple[Instance, dict[str, Any]]]) -> None:
        head = f'{{worker="{_escape(worker)}"'
        lv = head + "}"
        counts = dict.fromkeys(STATES, 0)
        exits = dict.fromkeys(EXIT_REASONS, 0)
        for inst, f in rows:
            counts[f["state"]] += 1
            for reason, n in inst.exits.items():
                exits[reason] += n
        for s in STATES:
            self.w_states.add(f'{head},state="{s}"}}', counts[s])
        for reason in EXIT_REASONS:
            self.w_exits.add(f'{head},reason="{reason}"}}', exits[reason])
        self.w_restarts.add(lv, sum(i.st.restarts for i, _ in rows))
        _add_known(self.w_hb, lv, (f["heartbeat_age"] for _, f in rows), max)
        _add_known(self.w_uptime, lv, (f["uptime"] for _, f in rows), min)
        _add_known(self.w_work, lv, (f["work_done"] for _, f in rows), sum)
        _add_known(self.w_cpu, lv, (f["cpu_seconds"] for _, f in rows), sum)
        _add_known(self.w_mem, lv, (f["rss"] for _, f in rows), sum)


def _add_known(fam: Family, label_text: str, values: Iterable[float | None], how: Any) -> None:
    known = [v for v in values if v is not None]
    if known:
        fam.add(label_text, how(known))


class DaemonCollector:
    """Collects at scrape time from the runtime, the loop and the HTTP server."""

    def __init__(self, rt: Runtime, server: HttpServer, max_instances: int) -> None:
        self.rt = rt
        self.server = server
        self.max_instances = max_instances

    def render(self) -> bytes:
        insts = sorted(self.rt.instances.values(), key=lambda i: (i.worker, i.index))
        rows = list(zip(insts, status_facts(self.rt, insts), strict=True))
        fams = Families()
        by_worker: dict[str, list[tuple[Instance, dict[str, Any]]]] = {}
        for n, (inst, f) in enumerate(rows):
            if n < self.max_instances:
                fams.instance(inst, f)
            by_worker.setdefault(inst.worker, []).append((inst, f))
        for worker, wrows in by_worker.items():
            fams.worker(worker, wrows)
        omitted = Family("pyvisor_metrics_instances_omitted", "gauge", "Instances without "
                         "per-instance series (supervisor.http_metrics_instances)")
        omitted.add("", max(0, len(rows) - self.max_instances))
        out = [f.text() for f in fams.all()]
        out += [omitted.text(), *(f.text() for f in self._daemon())]
        return "".join(out).encode("utf-8", "surrogateescape")

    def _daemon(self) -> list[Family]:
        adopt = Family("pyvisor_adoptions_total", "counter", "What this daemon found at "
                       "start-up, per instance record: adopted, exited while it was down, "
                       "unverifiable (FATAL)")
        for outcome in ADOPTION_OUTCOMES:
            adopt.add(labels(outcome=outcome), self.rt.adoptions.get(outcome, 0))
        lag = self.rt.loop.lag
        hist = Family("pyvisor_loop_lag_seconds", "histogram", "How late the daemon's loop ran "
                      "its timers")
        cumulative = 0
        for bound, count in zip([*LAG_BUCKETS, math.inf], lag.counts, strict=True):
            cumulative += count
            hist.add(labels(le=_value(float(bound))), cumulative, "_bucket")
        hist.add("", lag.sum, "_sum")
        hist.add("", cumulative, "_count")
        turns = Family("pyvisor_loop_turns_total", "counter", "Turns of the daemon's loop")
        turns.add("", self.rt.loop.turns)
        req = Family("pyvisor_http_requests_total", "counter", "HTTP requests answered, by "
                     "route and status code")
        for (route, code), n in sorted(self.server.requests.items()):
            req.add(labels(route=route, code=str(code)), n)
        conns = Family("pyvisor_http_connections", "gauge", "Open HTTP connections")
        conns.add("", len(self.server.conns))
        return [adopt, hist, turns, req, conns]
