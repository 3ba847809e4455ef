"""The daemon's answers to supervisorctl: one handler per verb, replies rendered here.

supervisorctl only imports click and sends a request; the daemon (which has psutil loaded
anyway) does the work and sends back the text to print and the exit code. Long operations
(start, stop, restart, reload, shutdown) answer when they are done.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import psutil

from supervisor.control.protocol import FAILED, NO_SUCH_TARGET, OK, USAGE, Reply, Request
from supervisor.core import IN_TRANSITION, State
from supervisor.names import parse_signal, signal_name
from supervisor.runtime import Instance, Runtime


class Responder(Protocol):
    closed: bool

    def __call__(self, reply: Reply) -> None: ...


class Daemon(Protocol):
    """What the handlers need from the daemon beyond the runtime."""

    runtime: Runtime
    leaving: str          # "" while running; "shutting down" or "re-executing" once begun

    def reload(self, done: Callable[[Reply], None]) -> None: ...
    def shutdown(self, done: Callable[[], None]) -> None: ...
    def reexec(self) -> None: ...


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h:02}:{m:02}:{s:02}" if d else f"{h}:{m:02}:{s:02}"


def fmt_bytes(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def instance_facts(inst: Instance, now: float, proc: psutil.Process | None,
                   tree: dict[str, int | None] | None = None) -> dict[str, Any]:
    """What status shows of one instance (the --json row; the text line renders it). With a
    cgroup (``tree``), CPU and memory are the whole tree's; else the leader's (``proc``)."""
    st = inst.st
    pid = inst.pid
    last = st.last_exit
    uptime = hb_age = work = cpu = rss = processes = ooms = None
    if pid is not None:
        if st.started_at is not None:
            uptime = round(now - st.started_at, 3)
        if inst.block is not None and inst.uses_library:
            with inst.block.reading():      # one open of the status page for its fields
                hb = inst.block.heartbeat_ns
                work = inst.block.work_done
            hb_age = round(now - hb / 1e9, 3) if hb else None
    if proc is not None:
        # two reads of /proc (stat, statm); psutil's oneshot() would add ~8 us per instance
        # and save no read, as the two figures come from different files
        try:
            times = proc.cpu_times()
            cpu = round(times.user + times.system, 2)
            rss = proc.memory_info().rss
        except (psutil.Error, OSError):
            pass
    if tree is not None:
        usec = tree["cpu_usec"]
        cpu = None if usec is None else round(usec / 1e6, 2)
        rss, processes, ooms = tree["memory"], tree["processes"], tree["oom_kills"]
    return {
        "name": inst.name, "worker": inst.worker, "state": st.state.value, "pid": pid,
        "uptime": uptime, "heartbeat_age": hb_age, "work_done": work, "cpu_seconds": cpu,
        "rss": rss, "last_exit": last.describe() if last else None,
        "fatal_reason": st.fatal_reason, "adopted": not inst.child,
        "processes": processes, "oom_kills": ooms, "cgroup": inst.cgroup,
    }


def render_status_line(f: dict[str, Any], width: int) -> str:
    head = f"{f['name']:<{width}}  {f['state']:<8}"
    if f["pid"] is None:
        detail = f["fatal_reason"] or (f"last: {f['last_exit']}" if f["last_exit"] else "")
        return f"{head}  {detail}".rstrip()
    hb, work, cpu, rss, up = (f["heartbeat_age"], f["work_done"], f["cpu_seconds"], f["rss"],
                              f["uptime"])
    return "".join((
        head, "  pid ", str(f["pid"]),
        "" if up is None else f", uptime {fmt_duration(up)}",
        ", hb -" if hb is None else f", hb {hb:.1f}s ago",
        ", work -" if work is None else f", work {work}",
        "" if cpu is None else f", cpu {cpu:.2f}s",
        "" if rss is None else f", mem {fmt_bytes(rss)}",
        f", {f['processes']} processes" if (f.get("processes") or 0) > 1 else "",
        ", adopted" if f["adopted"] else "",
    ))


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
            "reexec": self.reexec,
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
            known = ", ".join(sorted({i.worker for i in self.rt.instances.values()})) or "none"
            respond(Reply(NO_SUCH_TARGET, err=f"no such worker: {', '.join(unknown)} "
                                              f"(known: {known})\n"))
            return None
        return insts

    @staticmethod
    def _flag(request: Request, respond: Responder, name: str, default: bool) -> bool | None:
        """The boolean option, or None after a usage reply when it is not true or false."""
        value = request.flag(name, default)
        if value is None:
            respond(Reply(USAGE, err=f"option {name!r} must be true or false\n"))
        return value

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
        insts = self._targets(request, respond, default_all=True)
        if insts is None:
            return
        now = self.rt.now()
        facts = []
        for i in insts:     # one or two reads of /proc or the cgroup per instance, no psutil
            facts.append(instance_facts(i, now, None, self.rt.trees.stats(i)))
        as_json = self._flag(request, respond, "json", False)
        if as_json is None:
            return
        if as_json:
            # the rows once, as data (supervisorctl prints them, one per line; scripts on the
            # socket read them): at 10,000 instances a second copy as text doubled the reply
            respond(Reply(OK, data=facts))
            return
        width = max((len(f["name"]) for f in facts), default=4)
        text = "".join(render_status_line(f, width) + "\n" for f in facts)
        # names only in data: the text is what gets printed (--json carries the whole rows)
        respond(Reply(OK, out=text or "no workers configured\n",
                      data=[{"name": f["name"]} for f in facts]))

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
        graceful = self._flag(request, respond, "graceful", False) if wait is not None else None
        if graceful is None:
            return
        self.rt.request_stop(insts, graceful)
        if not wait:
            respond(Reply(OK, out="".join(f"{i.name}: stop requested\n" for i in insts)))
            return
        self.rt.wait_for(insts, lambda i: not i.has_process, lambda: respond(
            self._summary(insts, "stopped", lambda i: not i.has_process)))

    def restart(self, request: Request, respond: Responder) -> None:
        insts = self._targets(request, respond)
        if insts is None:
            return
        graceful = self._flag(request, respond, "graceful", False)
        if graceful is None:
            return
        self.rt.request_restart(insts, graceful)

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
        if stream not in ("stdout", "stderr"):
            respond(Reply(USAGE, err="tail: stream must be stdout or stderr\n"))
            return
        i = insts[0]
        path = i.stdout_path if stream == "stdout" else i.stderr_path
        respond(Reply(OK, data={stream: path, "instance": i.name}))

    def pid(self, request: Request, respond: Responder) -> None:
        if request.targets == []:  # None (not a list of names) is for _targets to refuse
            respond(Reply(OK, out=f"{os.getpid()}\n", data=os.getpid()))
            return
        insts = self._targets(request, respond)
        if insts is None:
            return
        pids = {i.name: i.pid for i in insts}
        text = "".join(f"{p}\n" if p is not None else f"{n}: not running\n"
                       for n, p in pids.items())
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

    def reexec(self, request: Request, respond: Responder) -> None:
        respond(Reply(OK, out="re-executing supervisord in place (same pid, workers keep "
                              "running)\n"))
        self.daemon.reexec()


