"""/metrics: the daemon's facts in the Prometheus text format, through a prometheus_client
custom collector (the library writes the format: escaping, HELP/TYPE, counters' _total).

Rules:

- the facts are the status rows (control.handlers.status_facts), the same source as
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
  instance, [A-Za-z0-9_] within the block's name size); the library escapes every label value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from supervisor.control.handlers import status_facts
from supervisor.core import State
from supervisor.loop import LAG_BUCKETS
from supervisor.runtime.runtime import EXIT_REASONS

if TYPE_CHECKING:
    from supervisor.http.server import HttpServer
    from supervisor.runtime import Instance, Runtime

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
STATES = [s.value for s in State]
ADOPTION_OUTCOMES = ("adopted", "exited_while_away", "unverifiable")
_W, _I = ["worker"], ["worker", "name"]


class Families:
    """The instance and worker families of one scrape, filled row by row."""

    def __init__(self) -> None:
        g, c = GaugeMetricFamily, CounterMetricFamily
        self.i_state = g("pyvisor_instance_state", "1 for the instance's current state, 0 for "
                         "the others", labels=[*_I, "state"])
        self.i_restarts = c("pyvisor_instance_restarts", "Respawns after an exit (restart "
                            "policy, backoff retries); kept across daemon restarts", labels=_I)
        self.i_exits = c("pyvisor_instance_exits", "Exits seen by this daemon, by reason "
                         "(success/failure per exit_codes, signal, unknown)",
                         labels=[*_I, "reason"])
        self.i_uptime = g("pyvisor_instance_uptime_seconds", "Seconds since the current "
                          "process started", labels=_I)
        self.i_hb = g("pyvisor_instance_heartbeat_age_seconds", "Seconds since the worker's "
                      "last heartbeat (workers that use the library)", labels=_I)
        self.i_work = c("pyvisor_instance_work_done", "Units of work the current process "
                        "reported", labels=_I)
        self.i_cpu = c("pyvisor_instance_cpu_seconds", "CPU seconds of the process tree (the "
                       "leader's without a cgroup)", labels=_I)
        self.i_mem = g("pyvisor_instance_memory_bytes", "Memory of the process tree (the "
                       "leader's RSS without a cgroup)", labels=_I)
        self.i_wcounter = c("pyvisor_worker_metric", "A counter the worker publishes "
                            "(worker API: w.counter(NAME)); per instance", labels=[*_I, "metric"])
        self.i_wgauge = g("pyvisor_worker_metric", "A gauge the worker publishes (worker API: "
                          "w.gauge(NAME)); per instance", labels=[*_I, "metric"])
        self.w_states = g("pyvisor_worker_instances", "Instances of the worker in each state",
                          labels=[*_W, "state"])
        self.w_restarts = c("pyvisor_worker_restarts", "Respawns after an exit, all instances",
                            labels=_W)
        self.w_exits = c("pyvisor_worker_exits", "Exits seen by this daemon, all instances, "
                         "by reason", labels=[*_W, "reason"])
        self.w_hb = g("pyvisor_worker_heartbeat_age_max_seconds", "The oldest heartbeat of "
                      "the worker's instances", labels=_W)
        self.w_uptime = g("pyvisor_worker_uptime_min_seconds", "Uptime of the worker's "
                          "youngest running instance", labels=_W)
        self.w_work = c("pyvisor_worker_work_done", "Units of work reported by the current "
                        "processes, all instances", labels=_W)
        self.w_cpu = c("pyvisor_worker_cpu_seconds", "CPU seconds of the current process "
                       "trees, all instances", labels=_W)
        self.w_mem = g("pyvisor_worker_memory_bytes", "Memory of the current process trees, "
                       "all instances", labels=_W)

    def all(self) -> list[Metric]:
        return [self.i_state, self.i_restarts, self.i_exits, self.i_uptime, self.i_hb,
                self.i_work, self.i_cpu, self.i_mem, self.i_wcounter, self.i_wgauge,
                self.w_states, self.w_restarts, self.w_exits, self.w_hb, self.w_uptime,
                self.w_work, self.w_cpu, self.w_mem]

    def instance(self, inst: Instance, f: dict[str, Any]) -> None:
        lv = [inst.worker, inst.name]
        state = f["state"]
        for s in STATES:
            self.i_state.add_metric([*lv, s], 1.0 if s == state else 0.0)
        self.i_restarts.add_metric(lv, inst.st.restarts)
        for reason in EXIT_REASONS:
            self.i_exits.add_metric([*lv, reason], inst.exits.get(reason, 0))
        for fam, key in ((self.i_uptime, "uptime"), (self.i_hb, "heartbeat_age"),
                         (self.i_work, "work_done"), (self.i_cpu, "cpu_seconds"),
                         (self.i_mem, "rss")):
            if f[key] is not None:
                fam.add_metric(lv, f[key])
        for m in f.get("metrics", ()):
            fam = self.i_wcounter if m["kind"] == "counter" else self.i_wgauge
            fam.add_metric([*lv, m["name"]], m["value"])

    def worker(self, worker: str, rows: list[tuple[Instance, dict[str, Any]]]) -> None:
        lv = [worker]
        counts = dict.fromkeys(STATES, 0)
        exits = dict.fromkeys(EXIT_REASONS, 0)
        for inst, f in rows:
            counts[f["state"]] += 1
            for reason, n in inst.exits.items():
                exits[reason] += n
        for s in STATES:
            self.w_states.add_metric([*lv, s], counts[s])
        for reason in EXIT_REASONS:
            self.w_exits.add_metric([*lv, reason], exits[reason])
        self.w_restarts.add_metric(lv, sum(i.st.restarts for i, _ in rows))
        _add_known(self.w_hb, lv, (f["heartbeat_age"] for _, f in rows), max)
        _add_known(self.w_uptime, lv, (f["uptime"] for _, f in rows), min)
        _add_known(self.w_work, lv, (f["work_done"] for _, f in rows), sum)
        _add_known(self.w_cpu, lv, (f["cpu_seconds"] for _, f in rows), sum)
        _add_known(self.w_mem, lv, (f["rss"] for _, f in rows), sum)


def _add_known(fam: Metric, labels: list[str], values: Iterable[float | None],
               how: Any) -> None:
    known = [v for v in values if v is not None]
    if known:
        fam.add_metric(labels, how(known))  # type: ignore[attr-defined]


class DaemonCollector(Collector):
    """Collects at scrape time from the runtime, the loop and the HTTP server."""

    def __init__(self, rt: Runtime, server: HttpServer, max_instances: int) -> None:
        self.rt = rt
        self.server = server
        self.max_instances = max_instances

    def collect(self) -> Iterator[Metric]:
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
        yield from fams.all()
        omitted = GaugeMetricFamily("pyvisor_metrics_instances_omitted", "Instances without "
                                    "per-instance series (supervisor.http_metrics_instances)")
        omitted.add_metric([], max(0, len(rows) - self.max_instances))
        yield omitted
        yield from self._daemon()

    def _daemon(self) -> Iterator[Metric]:
        adopt = CounterMetricFamily("pyvisor_adoptions", "What this daemon found at start-up, "
                                    "per instance record: adopted, exited while it was down, "
                                    "unverifiable (FATAL)", labels=["outcome"])
        for outcome in ADOPTION_OUTCOMES:
            adopt.add_metric([outcome], self.rt.adoptions.get(outcome, 0))
        yield adopt
        lag = self.rt.loop.lag
        cumulative, buckets = 0, []
        for bound, count in zip([*LAG_BUCKETS, float("inf")], lag.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        hist = HistogramMetricFamily("pyvisor_loop_lag_seconds", "How late the daemon's loop "
                                     "ran its timers", buckets=buckets, sum_value=lag.sum)
        yield hist
        turns = CounterMetricFamily("pyvisor_loop_turns", "Turns of the daemon's loop")
        turns.add_metric([], self.rt.loop.turns)
        yield turns
        req = CounterMetricFamily("pyvisor_http_requests", "HTTP requests answered, by route "
                                  "and status code", labels=["route", "code"])
        for (route, code), n in sorted(self.server.requests.items()):
            req.add_metric([route, str(code)], n)
        yield req
        conns = GaugeMetricFamily("pyvisor_http_connections", "Open HTTP connections")
        conns.add_metric([], len(self.server.conns))
        yield conns


def make_registry(rt: Runtime, server: HttpServer, max_instances: int) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(rt, server, max_instances))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
