"""Bench 11: event delivery over HTTP (server-sent events) and what idle or stalled event
clients cost the daemon, at N workers.

pyvisor only: supervisord pushes events only to eventlisteners (processes it runs and feeds
on their stdin), not to HTTP clients; its XML-RPC is polled. Measured:

- delivery latency: K clients on GET /api/v1/events (K = 1, 8, 32) and one control-socket
  follower (`events --follow`, beside it); the workers are stopped and started (raw `stop
  all` / `start all` requests) R times; for every event each client receives, the wall time
  of receipt minus the event's own time (the daemon stamps it when it publishes), median/p99;
- a raw `status` request (all N) timed with 0 clients and with 16 clients that never read,
  while the workers are stopped and started; and the daemon's VmRSS growth meanwhile.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from typing import Any

from harness import Pyvisor, Run, header, median, ms, parse_args, rss_kb, say, summary
from mass import boot, make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SSEClient(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.conn.request("GET", "/api/v1/events")
        self.resp = self.conn.getresponse()
        self.lat: list[float] = []
        self.lost = 0
        self.stop = False

    def run(self) -> None:
        try:
            while not self.stop:
                line = self.resp.readline(1 << 20)
                if not line:
                    return
                if line.startswith(b"data: {\"seq\""):
                    self.lat.append(time.time() - json.loads(line[6:])["time"])
                elif line.startswith(b"data: {\"lost\""):
                    self.lost += json.loads(line[6:])["lost"]
        except Exception:  # noqa: BLE001 -- closed under the reader: the run is over
            return

    def close(self) -> None:
        self.stop = True
        self.resp.close()
        self.conn.close()


class CtlFollower(threading.Thread):
    def __init__(self, d: Pyvisor) -> None:
        super().__init__(daemon=True)
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(d.sock)
        self.s.sendall(b'{"cmd": "events", "targets": ["all"], "opts": {"follow": true, '
                       b'"json": true}}\n')
        self.lat: list[float] = []
        self.since = time.time()     # it is first given the kept past: not deliveries

    def run(self) -> None:
        f = self.s.makefile("rb")
        try:
            for line in f:
                doc = json.loads(line)
                if "out" in doc and doc.get("stream"):
                    t = json.loads(doc["out"])["time"]
                    if t >= self.since:
                        self.lat.append(time.time() - t)
        except Exception:  # noqa: BLE001 -- closed under the reader: the run is over
            return

    def close(self) -> None:
        self.s.close()


def cycle(d: Pyvisor, reps: int, status_times: list[float] | None = None) -> None:
    for _ in range(reps):
        for verb in ("stop", "start"):
            r = d.request(verb, ["all"], {"wait": True})
            assert r.get("code") == 0, r
            if status_times is not None:
                t0 = time.monotonic()
                d.request("status", ["all"], {"json": True})
                status_times.append(ms(time.monotonic() - t0))


def stalled(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return s


def main() -> None:
    a = parse_args(__doc__.split("\n")[0], default_n=100, quick_n=20, extra=lambda ap: (
        ap.add_argument("--reps", type=int, default=5)))
    header("event delivery over HTTP (SSE), idle and stalled event clients",
           f"receipt minus the event's time, median/p99 over {a.reps} stop/start cycles; "
           "raw status time", "delivery <= 10 ms median at 32 clients", a.workers)
    with Run("events-http") as run:
        d = make(run, "pyvisor", "plain", a.workers)
        assert isinstance(d, Pyvisor)
        port = free_port()
        cfg: dict[str, Any] = json.loads(d.config.read_text())
        cfg["supervisor"]["http"] = f"127.0.0.1:{port}"
        d.config.write_text(json.dumps(cfg, indent=1))
        boot(d, a.workers)
        for k in (1, 8, 32):
            clients = [SSEClient(port) for _ in range(k)]
            ctl = CtlFollower(d)
            for c in [*clients, ctl]:
                c.start()
            time.sleep(0.5)
            cycle(d, a.reps)
            time.sleep(1.0)        # the last events reach every client
            for c in clients:
                c.close()
            ctl.close()
            for t in [*clients, ctl]:
                t.join(10)
            lat = [ms(x) for c in clients for x in c.lat]
            per = len(lat) // k
            lost = sum(c.lost for c in clients)
            say(f"pyvisor  SSE x{k:<3d} delivery  median {median(lat):6.2f} ms  "
                f"{summary(lat)}  ({per} events per client, {lost} lost)")
            cl = [ms(x) for x in ctl.lat]
            say(f"pyvisor  ctl follower beside  median {median(cl):6.2f} ms  {summary(cl)}")
        for n_stalled in (0, 16):
            subs = [stalled(port) for _ in range(n_stalled)]
            time.sleep(0.5)
            rss0 = rss_kb(d.pid)
            xs: list[float] = []
            cycle(d, a.reps, xs)
            grew = (rss_kb(d.pid) - rss0) / 1024
            say(f"pyvisor  status with {n_stalled:2d} stalled SSE clients  median "
                f"{median(xs):6.2f} ms  {summary(xs)}  RSS {grew:+.1f} MB meanwhile")
            for s in subs:
                s.close()


if __name__ == "__main__":
    main()
