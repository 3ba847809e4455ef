"""GET /api/v1/events: the runtime's events (supervisor.runtime.events) as server-sent events,
for the status page and for anyone with curl; read-only, so no token, like GET status.

Each event is ``id: EPOCH-SEQ`` and ``data: {the event's JSON}`` (the same object as
``supervisorctl events --json``); EPOCH names the daemon process (EventBus.epoch), because seq
starts at 1 in each: a client that reconnects to the next daemon with the last id it got is
known to come from another one, however far the new daemon's seq has gone. Two named events
carry what is not an event:

- ``event: hello`` first, on every (re)connect: ``{"last_seq": N, "reset": bool, "epoch":
  EPOCH}``; reset is true when the client resumes from another daemon's id (another EPOCH, or
  a bare seq this daemon never reached), and then it gets every event kept;
- ``event: lost``: ``{"lost": N, "err": "..."}``: N events were not sent to this client (it
  did not keep up, or it resumed from further back than the ring keeps); a client that shows
  state should fetch it again.

``?targets=web,db:0`` keeps the events of those targets (as supervisorctl reads them);
``Last-Event-ID: EPOCH-SEQ`` (the header an EventSource sends when it reconnects) or
``?after=``, either also as a bare SEQ of this daemon, first replays the kept events after SEQ
(Runtime.events.recent), then goes on live.

Bounds, the same as the control socket's event streams (supervisor.control.stream), because a
subscriber is an untrusted client and the loop must never stall or grow for it:

- an event stream holds one of the server's connection slots while it lives, and at most half
  of the slots are event streams (the other half stays for scrapes, probes and the API);
- at most ``cap`` bytes wait per client, and every reply together within the server's output
  budget; an event that does not fit is dropped and counted, and the next one that fits is
  preceded by the ``lost`` marker: memory never grows past the caps;
- a client that takes nothing for the server's ``write_timeout`` while bytes wait for it has
  stalled and is closed (its slot comes back); one that keeps taking bytes lives on;
- a comment line (``: keepalive``) goes to a client that got nothing for ``keepalive`` seconds,
  so proxies keep the connection and a vanished client is noticed. The timer belongs to the
  stream: with no client connected there is none.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

from supervisor.control.protocol import NO_SUCH_TARGET, USAGE
from supervisor.http.exchange import Exchange, Stream
from supervisor.loop import Timer
from supervisor.runtime.events import RuntimeEvent, target_filter

if TYPE_CHECKING:
    from collections.abc import Callable

    from supervisor.runtime import Runtime

SSE_CAP = 256 * 1024      # bytes waiting per client, as the control socket's STREAM_CAP
KEEPALIVE = 15.0          # seconds of silence before a keepalive comment
MAX_TARGETS = 64
CONTENT_TYPE = b"text/event-stream; charset=utf-8"
RETRY_MS = 2000           # what an EventSource waits before it reconnects


# Every client of the same event sends the same bytes: render each event once.
@functools.lru_cache(maxsize=256)
def render_sse(ev: RuntimeEvent, epoch: int) -> bytes:
    return b"id: %d-%d\ndata: %s\n\n" % (epoch, ev.seq, json.dumps(ev.to_json()).encode())


def parse_id(text: str, epoch: int) -> int | None:
    """The seq after which to resume (-1: from another daemon: everything kept), from
    ``EPOCH-SEQ`` or a bare ``SEQ``; None when it is neither."""
    head, dash, tail = text.rpartition("-")
    if not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in (tail, *(
            (head,) if dash else ()))):
        return None
    return -1 if dash and int(head) != epoch else int(tail)


def named(event: str, doc: dict[str, object]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(doc)}\n\n".encode()


class EventStreams:
    """The route and its open streams."""

    def __init__(self, rt: Runtime, cap: int = SSE_CAP, keepalive: float = KEEPALIVE) -> None:
        self.rt = rt
        self.cap = cap
        self.keepalive = keepalive
        self.open: set[_Client] = set()

    def route(self, ex: Exchange) -> None:
        targets = [t.strip() for t in ex.query.get("targets", "").split(",") if t.strip()]
        unknown_opts = sorted(set(ex.query) - {"targets", "after"})
        if unknown_opts:
            ex.json(400, _refusal(f"events takes no option {unknown_opts[0]!r}; it takes: "
                                  "targets, after"))
            return
        if len(targets) > MAX_TARGETS:
            ex.json(400, _refusal(f"at most {MAX_TARGETS} targets"))
            return
        if targets:
            _, unknown = self.rt.select(targets)
            if unknown:
                ex.json(404, {"code": int(NO_SUCH_TARGET), "ok": False, "out": "", "data": None,
                              "err": f"no such worker: {', '.join(unknown)}\n"})
                return
        raw = ex.headers.get(b"last-event-id")
        text = raw.decode("ascii", "replace").strip() if raw is not None else ex.query.get(
            "after")
        after: int | None = None
        if text is not None and text != "":
            after = parse_id(text, self.rt.events.epoch)
            if after is None:
                ex.json(400, _refusal("Last-Event-ID (or ?after=) must be an event's id: "
                                      "EPOCH-SEQ, or a bare SEQ"))
                return
        if ex.method == "HEAD":
            ex.reply(200, b"", CONTENT_TYPE)
            return
        server = ex.conn.server
        if len(self.open) >= max(1, server.max_connections // 2):
            ex.text(503, f"busy: {len(self.open)} event streams are open (at most half of "
                         "the HTTP connections); try again later\n")
            return
        _Client(self, ex, target_filter(targets), after)


class _Client:
    def __init__(self, owner: EventStreams, ex: Exchange, want: Callable[[RuntimeEvent], bool],
                 after: int | None) -> None:
        self.owner = owner
        self.loop = owner.rt.loop
        self.want = want
        self.lost = 0
        self.lost_total = 0
        self.last_sent = self.loop.clock()
        self.timer: Timer | None = None
        self.unsubscribe: Callable[[], None] = lambda: None
        owner.open.add(self)
        self.stream: Stream = ex.stream(200, CONTENT_TYPE, self._closed)
        bus = owner.rt.events
        last = bus.last_seq
        reset = after is not None and (after > last or after < 0)
        start = 0 if after is None or reset else after
        past = bus.recent(after=start) if after is not None else []
        self._put(f"retry: {RETRY_MS}\n".encode()
                  + named("hello", {"last_seq": last, "reset": reset, "epoch": bus.epoch}))
        first = past[0].seq if past else last + 1
        if after is not None and first - start - 1 > 0:
            self.lost = first - start - 1    # older than the ring keeps
        for ev in past:
            self.on_event(ev)
        if self.stream.closed:
            return
        self.unsubscribe = bus.subscribe(self.on_event)
        self._arm()

    def on_event(self, ev: RuntimeEvent) -> None:
        if self.want(ev):
            self._put(render_sse(ev, self.owner.rt.events.epoch))

    def _put(self, data: bytes) -> None:
        stream, cap = self.stream, self.owner.cap
        if stream.closed:
            return
        if self.lost:
            marker = named("lost", {"lost": self.lost, "err": (
                f"supervisord: {self.lost} events lost (this client did not keep up)")})
            if not stream.fits(len(marker) + len(data), cap):
                self._drop()
                return
            data = marker + data
            self.lost = 0
        elif not stream.fits(len(data), cap):
            self._drop()
            return
        self.last_sent = self.loop.clock()
        stream.send(data)

    def _drop(self) -> None:
        self.lost += 1
        self.lost_total += 1

    def _arm(self) -> None:
        self.timer = self.loop.call_at(self.last_sent + self.owner.keepalive, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.stream.closed:
            return
        if self.loop.clock() - self.last_sent >= self.owner.keepalive * 0.99:
            ka = b": keepalive\n\n"
            if self.stream.fits(len(ka), self.owner.cap):
                self.last_sent = self.loop.clock()
                self.stream.send(ka)
            else:
                self.last_sent = self.loop.clock()   # bytes wait anyway: no need for one
        if not self.stream.closed:
            self._arm()

    def _closed(self) -> None:
        self.owner.open.discard(self)
        self.unsubscribe()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _refusal(message: str) -> dict[str, object]:
    return {"code": int(USAGE), "ok": False, "out": "", "err": message + "\n", "data": None}
