"""The daemon's answers to supervisorctl: one handler per verb, replies rendered here.

supervisorctl only imports click and sends a request; the daemon does the work and sends
back the text to print and the exit code. Long operations (start, stop, restart, reload,
shutdown) answer when they are done.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from supervisor.control import protocol
from supervisor.control.protocol import FAILED, NO_SUCH_TARGET, OK, USAGE, Reply, Request
from supervisor.control.rows import (
    STATUS_PIECE,
    render_status_line,
    render_verbose,
    status_facts,
)
from supervisor.control.stream import Stream
from supervisor.core import IN_TRANSITION, State
from supervisor.names import parse_signal, signal_name, split_instance_name
from supervisor.runtime import Instance, Runtime
from supervisor.runtime.events import RuntimeEvent, target_filter


class Responder(Protocol):
    @property
    def closed(self) -> bool: ...

    def __call__(self, reply: Reply) -> None: ...
    def stream(self) -> Stream | None: ...
    def pieces(self, parts: Iterator[bytes]) -> bool: ...


class Daemon(Protocol):
    """What the handlers need from the daemon beyond the runtime."""

    runtime: Runtime
    leaving: str          # "" while running; "shutting down" or "re-executing" once begun

    def reload(self, done: Callable[[Reply], None]) -> None: ...
    def shutdown(self, done: Callable[[], None]) -> None: ...
    def reexec(self) -> None: ...


# Every follower of the same event renders the same line: render each event once.
@functools.lru_cache(maxsize=256)
def render_event(ev: RuntimeEvent) -> str:
    """``events``' human line: local time with milliseconds, then the event."""
    ms = int(ev.time * 1000) % 1000
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ev.time))}.{ms:03} " \
           f"{ev.describe()}\n"


@functools.lru_cache(maxsize=256)
def render_event_json(ev: RuntimeEvent) -> str:
    return json.dumps(ev.to_json()) + "\n"


LOG_FILES_SHOWN = 256       # files named in a logs reply, at most

# Verbs refused once a shutdown or a re-exec has begun. stop and shutdown stay allowed: a
# shutdown stops everything anyway, and a second shutdown just waits for the first.
CHANGES_STATE = frozenset({"start", "restart", "signal", "reload", "reexec"})


class Handlers:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.rt = daemon.runtime
        self.table: dict[str, Callable[[Request, Responder], None]] = {
            "status": self.status, "start": self.start, "stop": self.stop,
            "restart": self.restart, "signal": self.signal, "tail": self.tail,
            "reload": self.reload, "shutdown": self.shutdown, "pid": self.pid,
            "reexec": self.reexec, "events": self.events, "logs": self.logs,
        }

    def __call__(self, request: Request, respond: Responder) -> None:
        fn = self.table.get(request.cmd)
        if fn is None:
            respond(Reply(USAGE, err=f"unknown command {request.cmd!r}; known: "
                                     f"{', '.join(sorted(self.table))}\n"))
            return
        busy = self.daemon.leaving
        if busy and request.cmd in CHANGES_STATE:
            # what it would change would be lost (a re-exec) or undone (a shutdown)
            respond(Reply(FAILED, err=f"supervisord is {busy}; {request.cmd} refused\n"))
            return
        fn(request, respond)

    # -- helpers ------------------------------------------------------------------------------
    def _targets(self, request: Request, respond: Responder,
                 default_all: bool = False) -> list[Instance] | None:
        targets = request.targets
        if targets is None:
            respond(Reply(USAGE, err="targets must be a list of names\n"))
            return None
        targets = targets or (["all"] if default_all else [])
        if not targets:
            respond(Reply(USAGE, err="name a target: NAME, NAME:INDEX or all\n"))
            return None
        insts, unknown = self.rt.select(targets)
        if unknown:
            respond(Reply(NO_SUCH_TARGET, err=self._unknown(unknown)))
            return None
        return insts

    def _unknown(self, unknown: list[str]) -> str:
        """An instance index a worker does not have names the ones it has; an unknown worker
        names the known ones."""
        lines, workers = [], []
        for t in unknown:
            worker, index = split_instance_name(t)
            indexes = sorted(i.index for i in self.rt.of_worker(worker)) if index is not None \
                else []
            if not indexes:
                workers.append(t)
                continue
            first, last = f"{worker}:{indexes[0]}", f"{worker}:{indexes[-1]}"
            have = first if first == last else f"{first} .. {last}"
            lines.append(f"no such instance: {t} ({worker} has {have})\n")
        if workers:
            known = ", ".join(sorted({i.worker for i in self.rt.instances.values()})) or "none"
            lines.append(f"no such worker: {', '.join(workers)} (known: {known})\n")
        return "".join(lines)

    @staticmethod
    def _flag(request: Request, respond: Responder, name: str, default: bool) -> bool | None:
        """The boolean option, or None after a usage reply when it is not true or false."""
        value = request.flag(name, default)
        if value is None:
            respond(Reply(USAGE, err=f"option {name!r} must be true or false\n"))
        return value

    @staticmethod
    def _mode(request: Request, respond: Responder) -> bool:
        """Whether the stop mode is valid: true (graceful), false (signal) or absent (each
        worker's stop_mode)."""
        if isinstance(request.opts.get("graceful"), bool | None):
            return True
        respond(Reply(USAGE, err="option 'graceful' must be true, false or null\n"))
        return False

    def _summary(self, insts: list[Instance], verb: str, ok: Callable[[Instance], bool],
                 already: frozenset[Instance] = frozenset()) -> Reply:
        """One line per instance; exit FAILED (on stderr) if any did not end up as asked.
        ``already``: the ones that were so before the request ("already running")."""
        lines, failed = [], False
        for i in insts:
            if ok(i):
                lines.append(f"{i.name}: {'already running' if i in already else verb}")
                continue
            failed = True
            why = i.st.fatal_reason or (i.st.last_exit.describe() if i.st.last_exit
                                        else "see the daemon log")
            lines.append(f"{i.name}: ERROR ({i.st.state.value}) ({why})")
        text = "\n".join(lines) + "\n"
        return Reply(FAILED, err=text) if failed else Reply(OK, out=text)

    # -- verbs --------------------------------------------------------------------------------
    def status(self, request: Request, respond: Responder) -> None:
        """Sent in pieces of STATUS_PIECE rows, each read and rendered when its piece is due."""
        insts = self._targets(request, respond, default_all=True)
        if insts is None:
            return
        as_json = self._flag(request, respond, "json", False)
        if as_json is None:
            return
        if as_json:
            # the rows once, as data (supervisorctl prints them, one per line; scripts on the
            # socket read them): at 10,000 instances a second copy as text doubled the reply
            if not respond.pieces(protocol.reply_pieces(OK, (), self._facts(insts, STATUS_PIECE))):
                respond(Reply(OK, data=status_facts(self.rt, insts)))
            return
        verbose = self._flag(request, respond, "verbose", False)
        if verbose is None:
            return
        if not insts:
            respond(Reply(OK, out="no workers configured\n"))
            return
        tty, colour = request.opts.get("tty") is True, request.opts.get("colour") is True
        width = max(len(i.name) for i in insts)
        header = f"{'NAME':<{width}}  {'STATE':<8}  DETAILS\n" if tty else ""

        def text() -> Iterator[str]:
            yield header
            for facts in self._facts(insts, STATUS_PIECE // 10 if verbose else STATUS_PIECE):
                if verbose:
                    yield "".join(render_status_line(f, width, colour) + "\n"
                                  + render_verbose(f) for f in facts)
                else:
                    yield "\n".join([render_status_line(f, width, colour) for f in facts]) + "\n"

        # the text alone, "data" null: --json carries the rows (and their names)
        if not respond.pieces(protocol.reply_pieces(OK, text())):
            respond(Reply(OK, out="".join(text())))

    def _facts(self, insts: list[Instance], size: int) -> Iterator[list[dict[str, Any]]]:
        return (status_facts(self.rt, insts[k:k + size]) for k in range(0, len(insts), size))

    def start(self, request: Request, respond: Responder) -> None:
        insts = self._targets(request, respond)
        if insts is None:
            return
        wait = self._flag(request, respond, "wait", True)
        if wait is None:
            return
        running = frozenset(i for i in insts if i.st.state is State.RUNNING)
        self.rt.request_start(insts)
        if not wait:
            respond(Reply(OK, out="".join(f"{i.name}: start requested\n" for i in insts)))
            return

        self.rt.wait_for(insts, lambda i: i.st.state not in IN_TRANSITION, lambda: respond(
            self._summary(insts, "started", lambda i: i.st.state is State.RUNNING, running)))

    def stop(self, request: Request, respond: Responder) -> None:
        insts = self._targets(request, respond)
        if insts is None:
            return
        wait = self._flag(request, respond, "wait", True)
        if wait is None or not self._mode(request, respond):
            return
        self.rt.request_stop(insts, request.opts.get("graceful"))
        if not wait:
            respond(Reply(OK, out="".join(f"{i.name}: stop requested\n" for i in insts)))
            return
        self.rt.wait_for(insts, lambda i: not i.has_process, lambda: respond(
            self._summary(insts, "stopped", lambda i: not i.has_process)))

    def restart(self, request: Request, respond: Responder) -> None:
        insts = self._targets(request, respond)
        if insts is None:
            return
        if not self._mode(request, respond):
            return
        self.rt.request_restart(insts, request.opts.get("graceful"))

        def settled(i: Instance) -> bool:
            return i.st.state in (State.RUNNING, State.FATAL, State.EXITED) or (
                i.st.state is State.STOPPED and not i.st.restart_after_stop)

        self.rt.wait_for(insts, settled, lambda: respond(
            self._summary(insts, "restarted", lambda i: i.st.state is State.RUNNING)))

    def signal(self, request: Request, respond: Responder) -> None:
        insts = self._targets(request, respond)
        if insts is None:
            return
        raw = request.opts.get("signal", "")
        shown = raw[:40].upper() if isinstance(raw, str) else raw
        try:
            if not isinstance(raw, str | int):
                raise ValueError(raw)
            signum = parse_signal(raw)
        except ValueError:
            respond(Reply(USAGE, err=f"unknown signal {shown!r} (e.g. HUP, USR1, 10)\n"))
            return
        lines, failed = [], False
        for i in insts:
            if self.rt.send_signal(i, signum):
                lines.append(f"{i.name}: sent {signal_name(signum)}\n")
            else:
                failed = True
                lines.append(f"{i.name}: not running ({i.st.state.value})\n")
        respond(Reply(FAILED, err="".join(lines)) if failed else Reply(OK, out="".join(lines)))

    def tail(self, request: Request, respond: Responder) -> None:
        insts = self._targets(request, respond)
        if insts is None:
            return
        if len(insts) != 1:
            respond(Reply(USAGE, err="tail takes one instance, e.g. web:0\n"))
            return
        stream = request.opts.get("stream", "stdout")
        if stream not in ("stdout", "stderr", "both"):
            respond(Reply(USAGE, err="tail: stream must be stdout, stderr or both\n"))
            return
        i = insts[0]
        data: dict[str, Any] = {"instance": i.name}
        if stream in ("stdout", "both"):
            data["stdout"] = i.stdout_path
        if stream in ("stderr", "both"):
            data["stderr"] = i.stderr_path
        where = []     # why a stream has no file, for the client's message
        for name, to_daemon in zip(("stdout", "stderr"), i.cfg.to_daemon(), strict=True):
            if name in data and data[name] is None:
                where.append(f"its {name} goes to supervisord's own output" if to_daemon
                             else f"its {name} is discarded")
        data["elsewhere"] = "; ".join(where)
        respond(Reply(OK, data=data))

    def logs(self, request: Request, respond: Responder) -> None:
        """The log files of TARGETS (default all) for supervisorctl logs, which reads them."""
        insts = self._targets(request, respond, default_all=True)
        if insts is None:
            return
        files = []
        for i in insts:
            if i.stdout_path:
                files.append([i.name, "stdout", i.stdout_path])
            if i.stderr_path and i.stderr_path != i.stdout_path:
                files.append([i.name, "stderr", i.stderr_path])
        # supervisorctl follows at most LOG_FILES_SHOWN; the reply carries no more
        respond(Reply(OK, data={"files": files[:LOG_FILES_SHOWN], "total": len(files)}))

    def pid(self, request: Request, respond: Responder) -> None:
        if request.targets == []:  # None (not a list of names) is for _targets to refuse
            respond(Reply(OK, out=f"{os.getpid()}\n", data=os.getpid()))
            return
        insts = self._targets(request, respond)
        if insts is None:
            return
        pids = {i.name: i.pid for i in insts}
        named = "all" in (request.targets or ())    # pid all: which pid is whose
        text = "".join(f"{n}: not running\n" if p is None else f"{n} {p}\n" if named
                       else f"{p}\n" for n, p in pids.items())
        code = OK if all(p is not None for p in pids.values()) else FAILED
        respond(Reply(code, out=text if code == OK else "", err="" if code == OK else text,
                      data=pids))

    def reload(self, request: Request, respond: Responder) -> None:
        self.daemon.reload(respond)

    def shutdown(self, request: Request, respond: Responder) -> None:
        wait = self._flag(request, respond, "wait", True)
        if wait is None:
            return
        if not wait:
            respond(Reply(OK, out="shutting down\n"))
            self.daemon.shutdown(lambda: None)
            return
        self.daemon.shutdown(lambda: respond(Reply(OK, out="shut down\n")))

    def events(self, request: Request, respond: Responder) -> None:
        """The recent events of TARGETS (the bus's ring); with follow, then every new one as
        it happens, on a stream (bounded: see supervisor.control.stream)."""
        if self._targets(request, respond, default_all=True) is None:
            return
        follow = self._flag(request, respond, "follow", False)
        as_json = self._flag(request, respond, "json", False) if follow is not None else None
        if as_json is None:
            return
        want = target_filter(request.targets or ["all"])
        render = render_event_json if as_json else render_event
        bus = self.rt.events
        past = [e for e in bus.recent() if want(e)]
        if not follow:
            respond(Reply(OK, out="".join(render(e) for e in past)))
            return
        stream = respond.stream()
        if stream is None:
            return
        stream.unit = "events"

        def send(ev: RuntimeEvent) -> None:
            if want(ev):
                stream.send({"out": render(ev)})

        for e in past:
            send(e)
        stream.on_close = bus.subscribe(send)

    def reexec(self, request: Request, respond: Responder) -> None:
        respond(Reply(OK, out="re-executing supervisord in place (same pid, workers keep "
                              "running)\n"))
        self.daemon.reexec()


