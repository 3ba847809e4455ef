"""Bench 10: /metrics scrape time and daemon RSS with and without `http`, at N workers.

N plain workers (`sleep 100000`), all RUNNING. pyvisor twice: without `http` (RSS), then with
`supervisor: {http: 127.0.0.1:PORT}` (RSS before the first scrape and after the scrapes; the
wall time of each GET /metrics on a fresh connection, body read to the end). supervisord
has no metrics endpoint: what an exporter for it scrapes is XML-RPC getAllProcessInfo, timed
the same way, beside it. The daemon renders /metrics at most once a second (scrapes in between
get the same text), so the bench waits 1.1 s between timed scrapes (each one is a render) and
times one cached scrape apart. --per-instance sets http_metrics_instances (default 100: per-worker
aggregates plus the first 100 instances; N: every instance's series).
"""

from __future__ import annotations

import http.client
import json
import socket
import time

from harness import Pyvisor, Run, Supervisord, header, median, ms, parse_args, rss_kb, say, summary
from mass import boot, make, sides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> tuple[float, int]:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read()
    finally:
        conn.close()
    return time.monotonic() - t0, len(body)


def with_http(d: Pyvisor, port: int, per_instance: int) -> None:
    cfg = json.loads(d.config.read_text())
    cfg["supervisor"].update(http=f"127.0.0.1:{port}", http_metrics_instances=per_instance)
    d.config.write_text(json.dumps(cfg, indent=1))


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=1000, extra=lambda ap: (
        ap.add_argument("--reps", type=int, default=21),
        ap.add_argument("--per-instance", type=int, default=100)))
    header("/metrics scrape time, daemon RSS with and without http",
           f"wall time of one scrape on a fresh connection, median/p99 of {a.reps}; VmRSS",
           "scrape <= 100 ms (pyvisor)", a.workers)
    for side in sides(a.only):
        if side.startswith("pyvisor"):
            rss = {}
            for variant in ("without http", "with http"):
                with Run("http") as run:
                    d = make(run, side, "plain", a.workers)
                    assert isinstance(d, Pyvisor)
                    port = free_port()
                    if variant == "with http":
                        with_http(d, port, a.per_instance)
                    boot(d, a.workers)
                    time.sleep(2)
                    rss[variant] = rss_kb(d.pid) / 1024
                    say(f"{side:12s} {variant:13s} RSS {rss[variant]:6.1f} MB (settled, "
                        "before any scrape)")
                    if variant == "without http":
                        continue
                    xs, size = [], 0
                    for _ in range(a.reps):
                        time.sleep(1.1)          # past the render interval: a fresh render
                        t, size = scrape(port)
                        xs.append(ms(t))
                    cached = [ms(scrape(port)[0]) for _ in range(a.reps)]
                    after = rss_kb(d.pid) / 1024
                    say(f"{side:12s} scrape /metrics     median {median(xs):7.1f} ms  "
                        f"{summary(xs)}  ({size / 1024:.0f} KiB, per-instance series for "
                        f"{min(a.per_instance, a.workers)} of {a.workers})")
                    say(f"{side:12s} cached scrape       median {median(cached):7.1f} ms  "
                        f"{summary(cached)}")
                    say(f"{side:12s} with http     RSS {after:6.1f} MB after {2 * a.reps} "
                        "scrapes")
            say(f"{side:12s} http costs {rss['with http'] - rss['without http']:+.1f} MB of "
                "RSS before any scrape")
        else:
            with Run("http") as run:
                d = make(run, side, "plain", a.workers)
                assert isinstance(d, Supervisord)
                boot(d, a.workers)
                time.sleep(2)
                xs = []
                for _ in range(a.reps):
                    t0 = time.monotonic()
                    d.rpc().supervisor.getAllProcessInfo()
                    xs.append(ms(time.monotonic() - t0))
                say(f"{side:12s} getAllProcessInfo   median {median(xs):7.1f} ms  "
                    f"{summary(xs)}  RSS {rss_kb(d.pid) / 1024:.1f} MB")


if __name__ == "__main__":
    main()
