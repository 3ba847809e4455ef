"""The routes: probes, /metrics, and the JSON API over the control verbs.

The API does not reimplement a verb: each request becomes the control protocol's ``Request``
and goes to the same ``Handlers`` that serve supervisorctl; the ``Reply`` comes back as JSON
(``{"code", "ok", "out", "err", "data"}``, the exit code mapped to an HTTP status).

Rules of the API:

- GET is read-only and needs no token (metrics, probes, status);
- POST changes state and needs ``Authorization: Bearer TOKEN`` with the token in
  ``supervisor.http_token_file``, compared in constant time; never a cookie or a query
  parameter, so a cross-site form or link cannot carry it (and a cross-origin fetch that sets
  the header needs a CORS preflight, which this server never grants). Without a token file
  every POST is refused (403, saying how to configure one); no header is 401, a wrong token 403.
  A POST whose Origin header names another origin than its Host is refused (403) before the
  token is looked at: a browser says where a request comes from, and only the status page of
  this same endpoint may drive it.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from supervisor.control.protocol import FAILED, NO_SUCH_TARGET, OK, USAGE, Reply, Request
from supervisor.core import State
from supervisor.http.exchange import JSON, Exchange, Router, json_body
from supervisor.http.metrics import CONTENT_TYPE
from supervisor.http.page import Page
from supervisor.http.sse import EventStreams
from supervisor.http.token import token_matches

if TYPE_CHECKING:
    from supervisor.control.handlers import Daemon, Handlers

OPENAPI = os.path.join(os.path.dirname(__file__), "openapi.json")
VERBS = ("start", "stop", "restart", "signal")
# control.protocol exit code -> HTTP status
STATUS_OF: dict[int, int] = {OK: 200, USAGE: 400, NO_SUCH_TARGET: 404, FAILED: 409}
RENDER_EVERY = 1.0        # seconds: /metrics and the full status are made at most this often
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class _Answer:
    """A control-socket Responder that answers an HTTP exchange."""

    __slots__ = ("ex", "text", "sent")

    def __init__(self, ex: Exchange, text: bool = True) -> None:
        self.ex = ex
        self.text = text          # False: "out" left empty (status: the rows are in "data")
        self.sent: tuple[int, bytes] | None = None

    @property
    def closed(self) -> bool:
        return self.ex.closed

    def stream(self) -> None:
        return None           # no streamed replies over HTTP (events come as SSE)

    def pieces(self, _parts: Iterator[bytes]) -> bool:
        return False          # the handler answers whole (the body is cached and reused)

    def __call__(self, reply: Reply) -> None:
        status = STATUS_OF.get(reply.code, 500)
        try:
            body = json_body({"code": int(reply.code), "ok": reply.code == OK,
                              "out": reply.out if self.text else "", "err": reply.err,
                              "data": reply.data})
        except (TypeError, ValueError, RecursionError) as e:   # never into the runtime
            status, body = 500, json_body({"code": 1, "ok": False, "out": "", "data": None,
                                           "err": f"internal error: reply not serializable "
                                                  f"({e})\n"})
        self.sent = (status, body)
        self.ex.reply(status, body, JSON)


class Routes:
    def __init__(self, daemon: Daemon, handlers: Handlers, token: bytes | None,
                 metrics: Callable[[], bytes], ready_workers: tuple[str, ...] | None,
                 ) -> None:
        self.daemon = daemon
        self.handlers = handlers
        self.token = token
        self.metrics_text = metrics
        self.ready_workers = ready_workers
        self._openapi: bytes | None = None
        self._metrics: tuple[float, bytes] | None = None   # (fresh until, text)
        self._status: dict[str, tuple[float, bytes]] = {}  # target ("all") -> (until, body)
        self._ready: tuple[float, int, str] | None = None   # (fresh until, code, text)
        self._events: EventStreams | None = None
        self._watching = False
        self.page = Page()

    def events(self, ex: Exchange) -> None:
        if self._events is None:
            self._events = EventStreams(self.daemon.runtime)
        self._events.route(ex)

    def _changed(self, _ev: object) -> None:
        self._status = {}
        self._ready = None

    def _watch(self) -> None:
        """Drop the cached answers at every event: a client that saw an event (the status
        page, a probe after a start) must never be handed an answer from before it."""
        if not self._watching:
            self.daemon.runtime.events.subscribe(self._changed)
            self._watching = True

    def router(self) -> Router:
        r = Router()
        r.add("GET", "/livez", self.livez)
        r.add("GET", "/readyz", self.readyz)
        r.add("GET", "/metrics", self.metrics)
        r.add("GET", "/api/v1/status", self.status)
        r.add("GET", "/api/v1/instances/{name}", self.status)
        r.add("GET", "/api/v1/openapi.json", self.openapi)
        r.add("GET", "/api/v1/events", self.events)
        r.add("GET", "/", self.page.index)
        r.add("GET", "/static/{file}", self.page.static)
        for verb in VERBS:
            r.add("POST", f"/api/v1/instances/{{name}}/{verb}", self._verb(verb))
        return r

    # -- probes -----------------------------------------------------------------------------
    def livez(self, ex: Exchange) -> None:
        loop = self.daemon.runtime.loop
        ex.text(200, f"ok: the loop turns ({loop.turns} turns; last timer ran "
                     f"{loop.lag.last * 1000:.1f} ms late)\n")

    def readyz(self, ex: Exchange) -> None:
        # Answered from the last answer until an event or RENDER_EVERY passes (a config
        # reload changes autostart without an event): it reads every instance, and anyone
        # who reaches the address may ask as often as they like.
        if self.daemon.leaving:
            ex.text(503, f"not ready: supervisord is {self.daemon.leaving}\n")
            return
        now = self.daemon.runtime.now()
        if self._ready is None or now >= self._ready[0]:
            self._watch()
            code, text = self._readiness()
            self._ready = (self._fresh_until(now), code, text)
        ex.text(self._ready[1], self._ready[2])

    def _readiness(self) -> tuple[int, str]:
        rt = self.daemon.runtime
        if self.ready_workers is not None:
            want = set(self.ready_workers)
            insts = [i for i in rt.instances.values() if i.worker in want and not i.removed]
            what = "the workers in http_ready"
        else:
            insts = [i for i in rt.instances.values() if i.cfg.autostart and not i.removed]
            what = "every autostart instance"
        missing = sorted((i for i in insts if i.st.state is not State.RUNNING),
                         key=lambda i: (i.worker, i.index))
        if not missing:
            return 200, f"ready: {len(insts)} instances RUNNING ({what})\n"
        lines = [f"not ready: {len(missing)} of {len(insts)} instances are not RUNNING "
                 f"({what}):"]
        for i in missing[:100]:
            why = i.st.fatal_reason or (i.st.last_exit.describe() if i.st.last_exit else "")
            lines.append(f"  {i.name} {i.st.state.value}" + (f" ({why})" if why else ""))
        if len(missing) > 100:
            lines.append(f"  ... and {len(missing) - 100} more")
        return 503, "\n".join(lines) + "\n"

    # -- metrics ----------------------------------------------------------------------------
    def metrics(self, ex: Exchange) -> None:
        # Rule: the loop renders /metrics at most once per RENDER_EVERY; scrapes in between get
        # the same text. Reading every instance's facts costs ~0.1 ms each, and anyone who
        # reaches the address may scrape as often as they like.
        now = self.daemon.runtime.now()
        if self._metrics is None or now >= self._metrics[0]:
            text = self.metrics_text()
            self._metrics = (self._fresh_until(now), text)
        ex.reply(200, self._metrics[1], CONTENT_TYPE)

    def _fresh_until(self, began: float) -> float:
        # A render of many instances can take longer than RENDER_EVERY: its text then stays
        # in use for four times as long as it took, so renders take at most a fifth of the loop
        # however often anyone asks.
        took = self.daemon.runtime.now() - began
        return max(began + RENDER_EVERY, began + 5 * took)

    # -- API --------------------------------------------------------------------------------
    def status(self, ex: Exchange) -> None:
        # The same rule as /metrics for every target of more than one instance (the full
        # status, "all", a worker): rows made at most once per RENDER_EVERY per target, as
        # each costs a read of every instance it names, and GETs need no token. One instance
        # (or an unknown name: a 404) is cheap, and answered fresh.
        name = ex.params.get("name")
        rt = self.daemon.runtime
        now = rt.now()
        key = "all" if name is None else None if name in rt.instances else name
        hit = self._status.get(key) if key is not None else None
        if hit is not None and now < hit[0]:
            ex.reply(200, hit[1], JSON)
            return
        req = Request.make("status", [name] if name else [], {"json": True})
        answer = _Answer(ex, text=False)
        self.handlers(req, answer)
        if key is not None and answer.sent is not None and answer.sent[0] == 200:
            self._watch()
            # only live entries: at most one per worker (unknown names are 404s)
            self._status = {k: v for k, v in self._status.items() if now < v[0]}
            self._status[key] = (self._fresh_until(now), answer.sent[1])

    def openapi(self, ex: Exchange) -> None:
        if self._openapi is None:
            with open(OPENAPI, "rb") as f:
                self._openapi = f.read()
        ex.reply(200, self._openapi, b"application/json")

    def _verb(self, verb: str) -> Callable[[Exchange], None]:
        def route(ex: Exchange) -> None:
            if not self._authorized(ex):
                return
            opts = self._opts(ex, verb)
            if opts is not None:
                self.handlers(Request.make(verb, [ex.params["name"]], opts), _Answer(ex))
        return route

    def _authorized(self, ex: Exchange) -> bool:
        origin, host = ex.headers.get(b"origin"), ex.headers.get(b"host")
        if origin is not None and host is not None and (
                urllib.parse.urlsplit(origin.decode("ascii", "replace")).netloc.lower()
                != host.decode("ascii", "replace").lower()):
            ex.json(403, _refusal("cross-origin request refused: a page of another origin "
                                  "cannot drive this endpoint"))
            return False
        if self.token is None:
            ex.json(403, _refusal(
                "control over HTTP is off: no token is configured. Put a token in a file "
                "only root can read (head -c 32 /dev/urandom | base64 > /etc/pyvisor/http.token;"
                " chmod 600 /etc/pyvisor/http.token), set supervisor: {http_token_file: "
                "/etc/pyvisor/http.token}, restart supervisord, and send 'Authorization: "
                "Bearer TOKEN'"))
            return False
        header = ex.headers.get(b"authorization")
        if header is None:
            ex.json(401, _refusal("this request changes state: send 'Authorization: Bearer "
                                  "TOKEN' with the token in supervisor.http_token_file"),
                    [(b"www-authenticate", b'Bearer realm="pyvisor"')])
            return False
        if not token_matches(self.token, header):
            ex.json(403, _refusal("wrong token (Authorization: Bearer TOKEN, the token in "
                                  "supervisor.http_token_file)"))
            return False
        return True

    @staticmethod
    def _opts(ex: Exchange, verb: str) -> dict[str, Any] | None:
        opts: dict[str, Any] = {}
        allowed = {"start": ("wait",), "stop": ("wait", "graceful"), "restart": ("graceful",),
                   "signal": ("signal",)}[verb]
        for key, value in ex.query.items():
            if key not in allowed:
                ex.json(400, _refusal(f"{verb} takes no option {key!r}; it takes: "
                                      f"{', '.join(allowed)}"))
                return None
            if key == "signal":
                opts[key] = value
            elif value.lower() in _TRUE:
                opts[key] = True
            elif value.lower() in _FALSE:
                opts[key] = False
            else:
                ex.json(400, _refusal(f"option {key!r} must be 1 or 0 (true/false)"))
                return None
        if verb == "signal" and "signal" not in opts:
            ex.json(400, _refusal("signal needs ?signal=NAME (e.g. HUP, USR1, 10)"))
            return None
        return opts


def _refusal(message: str) -> dict[str, Any]:
    return {"code": int(USAGE), "ok": False, "out": "", "err": message + "\n", "data": None}


def load_openapi() -> dict[str, Any]:
    with open(OPENAPI, encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return doc
