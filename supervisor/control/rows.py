"""status's rows: the facts of each instance (one source for the status table, --json,
/api/v1/status and /metrics) and the table's text line made from them."""

from __future__ import annotations

from typing import Any

from supervisor.core import NO_PROCESS, State, TimerKind
from supervisor.runtime import Instance, Runtime, worker_data
from supervisor.runtime.instance import attached_many


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 86400:
        return f"{s // 3600}:{s // 60 % 60:02}:{s % 60:02}"
    return f"{s // 86400}d {s // 3600 % 24:02}:{s // 60 % 60:02}:{s % 60:02}"


def fmt_bytes(n: int) -> str:
    # powers of two: n / 1024 / 1024 and n / 1048576 are the same float
    if n < 1024:
        return f"{n:.0f}B"
    if n < 1048576:
        return f"{n / 1024:.1f}K"
    if n < 1073741824:
        return f"{n / 1048576:.1f}M"
    return f"{n / 1073741824:.1f}G"


_STATE_NAMES = {s: s.value for s in State}


def instance_facts(inst: Instance, now: float, tree: dict[str, int | None] | None = None,
                   attached: bool = True) -> dict[str, Any]:
    """What status shows of one instance (the --json row; the text line renders it). CPU and
    memory: ``tree`` (runtime.trees.stats). attached False: its page says it never attached."""
    st = inst.st
    state = st.state
    last = st.last_exit
    uptime = hb_age = work = cpu = rss = processes = ooms = published = None
    pid = None if state in NO_PROCESS else st.pid
    if pid is None:
        last_output, last_output_file, note = inst.last_output, inst.last_output_file, inst.note
    else:
        last_output = last_output_file = note = None
        if st.started_at is not None:
            uptime = round(now - st.started_at, 3)
        if attached and inst.block is not None and inst.uses_library:
            with inst.block.reading():      # one open of the status page for all it holds
                hb = inst.block.heartbeat_ns
                work = inst.block.work_done
                published = worker_data(inst)
            hb_age = round(now - hb / 1e9, 3) if hb else None
    if tree is not None:
        usec = tree["cpu_usec"]
        cpu = None if usec is None else round(usec / 1e6, 2)
        rss, processes, ooms = tree["memory"], tree["processes"], tree["oom_kills"]
    return {
        "name": inst.name, "worker": inst.worker, "state": _STATE_NAMES[state], "pid": pid,
        "uptime": uptime, "heartbeat_age": hb_age, "work_done": work, "cpu_seconds": cpu,
        "rss": rss, "last_exit": last.describe() if last else None,
        "fatal_reason": st.fatal_reason, "adopted": not inst.child,
        "processes": processes, "oom_kills": ooms, "cgroup": inst.cgroup,
        "last_output": last_output, "last_output_file": last_output_file,
        "restarts": st.restarts,
        "next_try": _next_try(inst, now) if state is State.BACKOFF else None,
        "note": note,
        "status_text": published.text if published else None,
        "metrics": published.to_json()["metrics"] if published else [],
    }


STATUS_PIECE = 250  # status rows per piece of the reply (--verbose: a tenth of it)
TABLE_TEXT = 60  # characters of a status text the table shows (--verbose and --json: all)


def render_verbose(f: dict[str, Any]) -> str:
    """The lines ``status --verbose`` adds under an instance: its whole status text and
    one line per counter or gauge."""
    lines = [f"    status: {f['status_text']}\n"] if f.get("status_text") else []
    lines += [f"    {m['name']} ({m['kind']}) = {m['value']}\n" for m in f.get("metrics", ())]
    return "".join(lines)


def _next_try(inst: Instance, now: float) -> str | None:
    """Why a BACKOFF instance waits and for how long: 'retry 2 of 5 in 1.6 s'."""
    timer = inst.timers.get(TimerKind.BACKOFF) if inst.st.state is State.BACKOFF else None
    if timer is None:
        return None
    left = f"in {max(0.0, timer.when - now):.1f} s"
    if inst.st.retries:
        return f"retry {inst.st.retries} of {inst.policy.start_retries} {left}"
    return f"a crash loop: restarting {left}"


# ANSI colours of the state column (status on a terminal only, never in pipes or --json)
_COLOURS = {"RUNNING": "32", "STARTING": "33", "STOPPING": "33", "BACKOFF": "1;31",
            "FATAL": "1;31", "EXITED": "35"}
# the state column and the gap before it, plain and coloured: made once per state
_PADDED = {s.value: f"  {s.value:<8}" for s in State}
_COLOURED = {s: f"  \x1b[{c}m{s:<8}\x1b[0m" if (c := _COLOURS.get(s)) else t
             for s, t in _PADDED.items()}


def render_status_line(f: dict[str, Any], width: int, colour: bool = False) -> str:
    state = f["state"]
    head = f["name"].ljust(width) + ((_COLOURED if colour else _PADDED).get(state)
                                     or f"  {state:<8}")
    pid = f["pid"]
    if pid is None:
        detail = f["fatal_reason"] or (f"last: {f['last_exit']}" if f["last_exit"] else "")
        if f.get("next_try"):
            detail += f"; {f['next_try']}"
        if f.get("restarts") and state in ("BACKOFF", "STARTING"):
            detail += f"; restarts {f['restarts']}"
        if f.get("last_output"):
            detail += f"; its last line: {f['last_output']!r} (in {f['last_output_file']})"
        if f.get("note"):
            detail += f". {f['note']}"
        return f"{head}  {detail}".rstrip()
    # one str grown in place (CPython appends to a str nothing else holds): cheaper per row
    # than a tuple of mostly empty parts joined
    line = f"{head}  pid {pid}"
    if (up := f["uptime"]) is not None:
        line += ", uptime " + fmt_duration(up)
    hb, work = f["heartbeat_age"], f["work_done"]
    line += ", hb -" if hb is None else f", hb {hb:.1f}s ago"
    line += ", work -" if work is None else f", work {work}"
    if (cpu := f["cpu_seconds"]) is not None:
        line += f", cpu {cpu:.2f}s"
    if (rss := f["rss"]) is not None:
        line += ", mem " + fmt_bytes(rss)
    if (processes := f.get("processes")) and processes > 1:
        line += f", {processes} processes"
    if restarts := f.get("restarts"):
        line += f", restarts {restarts}"
    if f["adopted"]:
        line += ", adopted"
    if text := f.get("status_text"):
        line += _table_text(text)
    return line


def status_facts(rt: Runtime, insts: list[Instance]) -> list[dict[str, Any]]:
    """The status rows of insts: what `status` shows, /api/v1/status returns and /metrics
    exports (one source for all three). One or two reads of /proc or the cgroup per instance,
    batched (runtime.procstats), no psutil."""
    now = rt.now()
    # the pages of those not yet seen attached, in one batch (a page seen attached stays so)
    attached = attached_many([i for i in insts if i.block is not None and i.pid])
    return [instance_facts(i, now, s, i in attached)
            for i, s in zip(insts, rt.trees.stats_many(insts), strict=True)]


def _table_text(text: str | None) -> str:
    if not text:
        return ""
    return f"  [{text if len(text) <= TABLE_TEXT else text[:TABLE_TEXT - 1] + '…'}]"
