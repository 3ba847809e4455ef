"""Making the running world match a config: after adoption, on reload, across a re-exec.

Drift rules (documented in the README):
- an instance that runs but is no longer configured (worker removed, index ≥ numprocs) is
  stopped gracefully and forgotten;
- a configured instance with no process is started if autostart;
- an instance whose worker config changed is restarted (gracefully) with the new config;
  after a daemon crash, by the hash of its config recorded in its control block.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from supervisor import core, safefs
from supervisor.adopt import Found, scan
from supervisor.config import Config
from supervisor.core import NO_PROCESS, InstanceState, State, StopInFlight, TimerKind
from supervisor.runtime import Instance, Runtime, config_hash
from supervisor.runtime.cgroups import CgroupTree
from supervisor.runtime.exits import exit_status_from_record
from supervisor.runtime.intent import ended_of, restarts_of, stop_of, wanted_of
from worker import block as blk


def apply_intent(rt: Runtime, intent: dict[str, dict[str, Any]]) -> None:
    """Before anything starts: the operator's last wish for each instance, as the previous
    daemon recorded it."""
    for name, rec in intent.items():
        inst = rt.instances.get(name)
        wanted = wanted_of(rec)
        if inst is not None and wanted is not None:
            rt.restore_intent(inst, wanted)
        if inst is not None and restarts_of(rec):
            rt.restore_restarts(inst, restarts_of(rec))


def apply_ended(rt: Runtime, intent: dict[str, dict[str, Any]], accounted: set[str]) -> None:
    """After adoption: an instance that had ended for good (EXITED, FATAL) and of which no
    process was found stays there, as if the daemon had never gone down: a SIGKILLed daemon's
    successor ran every finished ``restart: never`` job again, and every FATAL crash loop."""
    for name, rec in intent.items():
        inst = rt.instances.get(name)
        ended = ended_of(rec)
        if (ended is not None and inst is not None and name not in accounted
                and inst.st.state is State.STOPPED):
            rt.dispatch(inst, core.IntentRestored(rt.now(), inst.st.wanted, ended))


def apply_adoption(rt: Runtime, config: Config,
                   intent: dict[str, dict[str, Any]] | None = None) -> set[str]:
    """Adopt every verified live worker; returns the names of instances now accounted for.
    A stop in flight is carried on with its kind and deadline (from the intent record, else
    from the ctl page's command word, which only the daemon writes). The log lines of the
    adoption (one transition per instance) are written in batches, in order."""
    accounted: set[str] = set()
    now = rt.now()
    cg = rt.trees.cgroups
    def member(instance: str, pid: int) -> bool | None:
        return cg.contains(instance, pid) if cg is not None else None
    found = scan(config.supervisor.block_prefix, member,
                 os.path.dirname(cg.home) if cg is not None else None)
    for f in found:
        name = _adopt_one(rt, f, now, intent or {})
        if name is not None:
            accounted.add(name)
    return accounted


def _adopt_one(rt: Runtime, f: Found, now: float, intent: dict[str, dict[str, Any]]
               ) -> str | None:
    inst = rt.instance_named(f.instance)
    inst.incarnation = f.incarnation
    if f.unverifiable:
        f.block.close()
        rt.unverifiable(inst, f.unverifiable)
        return inst.name
    if f.pid is None:
        if f.never_ran and not _busy_cgroup(rt.trees.cgroups, inst.name):
            _never_ran(rt, inst, f)
            return None
        stop = stop_of(intent.get(inst.name, {}))
        _exited_while_away(rt, inst, f, stop is not None and stop.restart)
        return inst.name
    assert f.pidfd is not None
    inside, stray = _outside_its_cgroup(rt.trees.cgroups, inst.name, f.pid, f.cgroup_id,
                                        f.cgroup_path)
    if stray:
        os.close(f.pidfd)
        f.block.close()
        rt.log("ERROR", f"{inst.name} {stray}; not adopted and not started again")
        rt.unverifiable(inst, stray)
        return inst.name
    ready = f.ready or (not f.attached and now - f.started_at >= inst.policy.start_seconds)
    stop = stop_of(intent.get(inst.name, {}))
    if stop is None and f.cmd == blk.CMD_STOP_GRACEFUL:
        stop = StopInFlight(graceful=True, deadline=f.deadline_ns / 1e9)
    rt.adopt(inst, f.pid, f.pidfd, f.block, f.child, ready, f.started_at, stop, inside)
    # the core's transition line says "adopted pid N" (one line per instance at 10,000)
    if stop is not None:
        rt.log("INFO", f"{inst.name} was being stopped when supervisord went down; carrying on")
    elif inst.st.wanted is False:
        rt.log("INFO", f"{inst.name} was asked to stop before supervisord went down; stopping it")
        rt.request_stop([inst], graceful=True)
    elif inst.removed:
        rt.log("INFO", f"{inst.name} is no longer configured; stopping it")
        rt.request_stop([inst], graceful=True)
    elif f.config_hash != config_hash(inst.cfg):
        rt.log("INFO", f"{inst.name} config changed while supervisord was down; restarting it")
        rt.request_stop([inst], graceful=True, restart=True)
    return inst.name


def _outside_its_cgroup(cg: CgroupTree | None, instance: str, pid: int,
                        cgroup_id: int | None = None, cgroup_path: str | None = None
                        ) -> tuple[bool | None, str]:
    """With cgroups, the instance's tree lives in its cgroup, which nothing can join without
    the daemon's rights: a recorded pid outside a cgroup that holds other processes is not
    its leader. Where the process was is what the scan read with its pidfd held (cgroup_id
    from PIDFD_GET_INFO, or cgroup_path from /proc/PID/cgroup), else /proc/PID/cgroup now.
    (whether pid is in the cgroup, None without cgroups; why it does not verify, or "")."""
    if cg is None:
        return None, ""
    if cgroup_id is not None:
        inside = cg.has_id(instance, cgroup_id)
    elif cgroup_path is not None:
        inside = cgroup_path == cg.relative(instance)
    else:
        inside = cg.contains(instance, pid)
    if inside:
        return True, ""
    path = cg.path(instance)
    if not os.path.isdir(path) or not cg.populated(path):
        return False, ""
    return False, f"pid {pid} is not in the instance's cgroup {path}, which holds other processes"


def _busy_cgroup(cg: CgroupTree | None, instance: str) -> bool:
    """Whether the instance's cgroup holds processes (False without cgroups)."""
    if cg is None:
        return False
    path = cg.path(instance)
    return os.path.isdir(path) and cg.populated(path)


def _never_ran(rt: Runtime, inst: Instance, f: Found) -> None:
    """A block whose spawn never happened (made ahead of it) or ended before it was recorded,
    its cgroup holding nothing: no exit to report (an instance with restart: never stayed
    EXITED, never started); the instance starts, or not, as if there had been no block."""
    f.block.close()
    f.block.unlink()
    rt.log("INFO", f"{inst.name} removing its control block: supervisord went down before "
                   "its spawn was recorded, and nothing runs for it")
    if inst.removed:
        rt.forget(inst)


def _exited_while_away(rt: Runtime, inst: Instance, f: Found, restart: bool = False) -> None:
    status = (exit_status_from_record(f.exit) if f.exit is not None
              else core.ExitStatus(source="unknown"))
    f.block.close()
    f.block.unlink()
    rt.log("INFO", f"{inst.name} exited while supervisord was down ({status.describe()})")
    rt.exited_while_away(inst, status, f.started_at, restart)


# -- reload -----------------------------------------------------------------------------------
def apply_config(rt: Runtime, old: Config, new: Config) -> tuple[str, list[Instance]]:
    """Apply only what changed. Returns a summary and the instances to wait for."""
    rt.set_config(new)
    lines: list[str] = []
    settle: list[Instance] = []
    for name in old.workers.keys() - new.workers.keys():
        insts = rt.of_worker(name)
        rt.remove(insts)
        settle += insts
        lines.append(f"removed {name} ({_count(len(insts))})")
    for name in new.start_order():
        cfg = new.workers[name]
        before = old.workers.get(name)
        if before is None:
            made = rt.add_worker(name, cfg)
            if cfg.autostart:
                rt.request_start(made)
            settle += made
            lines.append(f"added {name} ({_count(len(made))})")
            continue
        if before == cfg:     # its instances hold the new, equal object: the old one goes
            for i in rt.of_worker(name):
                i.cfg = cfg
            continue
        insts = rt.of_worker(name)
        only_numprocs = before.model_copy(update={"numprocs": cfg.numprocs}) == cfg
        surplus = [i for i in insts if i.index >= cfg.numprocs]
        rt.remove(surplus)
        settle += surplus
        keep = [i for i in insts if i.index < cfg.numprocs]
        for i in keep:
            rt.reconfigure(i, cfg)
        made = rt.add_worker(name, cfg)
        if cfg.autostart:
            rt.request_start(made)
        settle += made
        if only_numprocs:
            lines.append(f"{name}: numprocs {before.numprocs} -> {cfg.numprocs}")
            continue
        restarted = [i for i in keep if i.has_process]
        started = [i for i in keep if not i.has_process and i.wants_start]
        left = [i for i in keep if not i.has_process and not i.wants_start]
        # one batch: its stops on disk before their signals go out (Runtime.dispatch_all)
        rt.request_stop(restarted, graceful=True, restart=True)
        rt.request_start(started)
        settle += keep
        done = [f"{verb} {_count(len(which))}" for verb, which in (
            ("restarted", restarted), ("started", started)) if which]
        if left:
            names = ", ".join(i.name for i in left[:5]) + (", ..." if len(left) > 5 else "")
            done.append(f"{_count(len(left))} stopped, left stopped with the new config "
                        f"({names})")
        lines.append(f"changed {name}: {'; '.join(done)}")
    lines += _supervisor_changes(old.supervisor.model_dump(), new.supervisor.model_dump())
    return "".join(f"{line}\n" for line in lines), settle


# Settings of the supervisor: section that a running daemon does not change: its sockets, its
# block names, its cgroup mode and its own logging are set up once, at start. Every other one
# is in effect at once (log_dir through the workers' log paths: the workers whose paths moved
# are restarted).
_AT_NEXT_START = ("socket", "socket_group", "socket_mode", "block_prefix", "cgroups", "http",
                  "http_allow_remote", "log_level")


def _supervisor_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changed = [k for k in new if old.get(k) != new[k]]
    later = [k for k in changed if k in _AT_NEXT_START]
    now = [k for k in changed if k not in _AT_NEXT_START]
    return ([f"supervisor: {', '.join(now)} changed, in effect now"] if now else []) + (
        [f"supervisor: {', '.join(later)} changed; takes effect at the next start of "
         "supervisord (this one keeps the old value)"] if later else [])


def _count(n: int) -> str:
    return f"{n} instance" if n == 1 else f"{n} instances"


# -- re-exec ----------------------------------------------------------------------------------
def save_state(rt: Runtime, path: str) -> None:
    """What a re-exec must carry over that the blocks don't hold: each instance's record and
    its armed timers (absolute monotonic deadlines: CLOCK_MONOTONIC survives exec)."""
    doc: dict[str, Any] = {"pid": os.getpid(), "instances": {}}
    for inst in rt.instances.values():
        st = dataclasses.asdict(inst.st)
        st["state"] = inst.st.state.value
        st["timers"] = [k.value for k in inst.st.timers]
        st["last_exit"] = dataclasses.asdict(inst.st.last_exit) if inst.st.last_exit else None
        doc["instances"][inst.name] = {
            "st": st, "incarnation": inst.incarnation,
            "deadlines": {k.value: t.when for k, t in inst.timers.items() if not t.cancelled},
            "pipes": [rt.console.hand_over(p) for p in inst.pipes if p.open],
        }
    dfd = safefs.trusted_dir(os.path.dirname(path))
    try:
        safefs.write_atomic(dfd, os.path.basename(path), json.dumps(doc).encode())
    finally:
        os.close(dfd)


MAX_SAVED_STATE = 256 * 1024 * 1024


def load_state(path: str) -> dict[str, Any]:
    """Read and remove what save_state wrote (ours alone: owner and directory checked).
    Raises OSError or ValueError."""
    dfd = safefs.trusted_dir(os.path.dirname(path))
    try:
        name = os.path.basename(path)
        raw = safefs.read_small(dfd, name, path, MAX_SAVED_STATE, os.geteuid())
        os.unlink(name, dir_fd=dfd)
    finally:
        os.close(dfd)
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def restore_state(rt: Runtime, saved: dict[str, Any]) -> tuple[set[str], list[Instance]]:
    """Put back what a re-exec saved. Returns the names of the instances restored, and the
    instances whose spawn was still queued when the state was saved (to be started)."""
    restored: set[str] = set()
    pending: list[Instance] = []
    for name, rec in saved.get("instances", {}).items():
        inst = rt.instances.get(name)
        pipes = rec.get("pipes") if isinstance(rec.get("pipes"), list) else []
        for handed in pipes[:2]:    # the output pipes the daemon reads (stdout: daemon)
            pipe = rt.console.take_over(name, handed)
            if pipe is not None and inst is not None and inst.pidfd is not None:
                inst.pipes.append(pipe)
            elif pipe is not None:
                pipe.finish()       # its process is gone: what it wrote last, then close
        if inst is None:
            continue
        st = dict(rec["st"])
        st["state"] = State(st["state"])
        st["timers"] = frozenset(TimerKind(k) for k in st["timers"])
        st["last_exit"] = core.ExitStatus(**st["last_exit"]) if st["last_exit"] else None
        st["recent_crashes"] = tuple(st.get("recent_crashes", ()))
        st["restarts"] = restarts_of(st)          # a count, or 0 (older files have none)
        if st["state"] is State.STARTING and st["pid"] is None and inst.pidfd is None:
            pending.append(inst)     # Spawn was queued, not carried out: start it here
            continue
        if st["state"] not in NO_PROCESS and st["state"] is not State.BACKOFF and (
                inst.pidfd is None):
            continue   # its process is gone: adoption already handled it
        rt.restore(inst, InstanceState(**st), rec["incarnation"],
                   {TimerKind(k): when for k, when in rec["deadlines"].items()})
        restored.add(name)
    return restored, pending
