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

from loguru import logger

from supervisor import core
from supervisor.adopt import Found, scan
from supervisor.config import Config, WorkerConfig
from supervisor.core import InstanceState, State, TimerKind
from supervisor.runtime import (
    GONE,
    Instance,
    Runtime,
    config_hash,
    exit_status_from_record,
    uses_library,
)
from worker import block as blk


def _removed_config() -> WorkerConfig:
    """A stand-in config for an adopted instance that the config no longer has."""
    return WorkerConfig.model_validate({"command": ["(removed)"], "autostart": False,
                                        "restart": "never"})


def _instance_for(rt: Runtime, config: Config, name: str) -> Instance:
    inst = rt.instances.get(name)
    if inst is not None:
        return inst
    worker, _, index = name.rpartition(":")
    cfg = config.workers.get(worker) or _removed_config()
    inst = Instance(name, worker, int(index) if index.isdigit() else 0, cfg, cfg.policy(worker),
                    removed=True)
    if worker in config.workers:
        inst.stdout_path, inst.stderr_path = cfg.log_paths(worker, inst.index)
    rt.instances[name] = inst
    return inst


def apply_adoption(rt: Runtime, config: Config) -> set[str]:
    """Adopt every verified live worker; returns the names of instances now accounted for."""
    accounted: set[str] = set()
    now = rt.now()
    for f in scan(config.supervisor.block_prefix):
        inst = _instance_for(rt, config, f.instance)
        accounted.add(inst.name)
        inst.incarnation = f.incarnation
        if f.pid is None:
            _exited_while_away(rt, inst, f)
            continue
        assert f.pidfd is not None
        inst.block, inst.child = f.block, f.child
        rt.watch(inst, f.pid, f.pidfd)
        ready = f.ready or (f.block.pid == 0 and now - f.started_at >= inst.policy.start_seconds)
        rt.dispatch(inst, core.Adopted(now, f.pid, ready, f.started_at))
        logger.info(f"{inst.name} adopted pid {f.pid} "
                    f"({'child, re-exec' if f.child else 'after a daemon restart'})")
        _seq, cmd = f.block.cmd
        if cmd == blk.CMD_STOP_GRACEFUL:
            # the block remembers a graceful stop in flight: carry on with it, same deadline
            logger.info(f"{inst.name} was being stopped when supervisord went down; carrying on")
            rt.dispatch(inst, core.StopRequested(now, graceful=True))
            deadline = f.block.deadline_ns / 1e9
            if TimerKind.GRACEFUL in inst.timers and deadline > now:
                rt.arm_timer(inst, TimerKind.GRACEFUL, deadline)
        elif inst.removed:
            logger.info(f"{inst.name} is no longer configured; stopping it")
            rt.dispatch(inst, core.StopRequested(now, graceful=uses_library(inst)))
        elif f.block.config_hash != config_hash(inst.cfg):
            logger.info(f"{inst.name} config changed while supervisord was down; restarting it")
            rt.dispatch(inst, core.StopRequested(now, graceful=uses_library(inst), restart=True))
    return accounted


def _exited_while_away(rt: Runtime, inst: Instance, f: Found) -> None:
    status = (exit_status_from_record(f.exit) if f.exit is not None
              else core.ExitStatus(source="unknown"))
    f.block.close()
    f.block.unlink()
    logger.info(f"{inst.name} exited while supervisord was down ({status.describe()})")
    if inst.removed:
        rt.instances.pop(inst.name, None)
        return
    now = rt.now()
    rt.dispatch(inst, core.Adopted(now, 0, True, f.started_at))
    rt.dispatch(inst, core.Exited(now, status))


# -- reload -----------------------------------------------------------------------------------
def apply_config(rt: Runtime, old: Config, new: Config) -> tuple[str, list[Instance]]:
    """Apply only what changed. Returns a summary and the instances to wait for."""
    rt.config = new
    lines: list[str] = []
    settle: list[Instance] = []
    now = rt.now()
    for name in old.workers.keys() - new.workers.keys():
        insts = [i for i in rt.instances.values() if i.worker == name]
        _remove(rt, insts, now)
        settle += insts
        lines.append(f"removed {name} ({len(insts)} instances)")
    for name in new.start_order():
        cfg = new.workers[name]
        before = old.workers.get(name)
        if before is None:
            made = rt.make_instances(name, cfg)
            if cfg.autostart:
                rt.request_start(made)
            settle += made
            lines.append(f"added {name} ({len(made)} instances)")
            continue
        if before == cfg:
            continue
        insts = [i for i in rt.instances.values() if i.worker == name]
        only_numprocs = before.model_copy(update={"numprocs": cfg.numprocs}) == cfg
        surplus = [i for i in insts if i.index >= cfg.numprocs]
        _remove(rt, surplus, now)
        settle += surplus
        keep = [i for i in insts if i.index < cfg.numprocs]
        for i in keep:
            i.cfg, i.policy = cfg, cfg.policy(name)
            i.stdout_path, i.stderr_path = cfg.log_paths(name, i.index)
        made = rt.make_instances(name, cfg)
        if cfg.autostart:
            rt.request_start(made)
        settle += made
        if only_numprocs:
            lines.append(f"{name}: numprocs {before.numprocs} -> {cfg.numprocs}")
            continue
        for i in keep:
            if i.st.state not in GONE:
                rt.dispatch(i, core.StopRequested(now, graceful=uses_library(i), restart=True))
            elif cfg.autostart and not i.st.stop_requested:
                rt.request_start([i])
        settle += keep
        lines.append(f"changed {name}: restarted {len(keep)} instances")
    sup_old = old.supervisor.model_dump(exclude={"log_level"})
    if sup_old != new.supervisor.model_dump(exclude={"log_level"}):
        lines.append("supervisor: section changed; socket, block_prefix and log_dir take "
                     "effect at the next start of supervisord")
    return "".join(f"{line}\n" for line in lines), settle


def _remove(rt: Runtime, insts: list[Instance], now: float) -> None:
    rt.cancel_deferred(insts)
    for i in insts:
        i.removed = True
        if i.st.state in GONE:
            rt.instances.pop(i.name, None)
        else:
            rt.dispatch(i, core.StopRequested(now, graceful=uses_library(i)))


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
        }
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def restore_state(rt: Runtime, saved: dict[str, Any]) -> set[str]:
    """Put back what a re-exec saved; returns the names of the instances restored."""
    restored: set[str] = set()
    for name, rec in saved.get("instances", {}).items():
        inst = rt.instances.get(name)
        if inst is None:
            continue
        st = dict(rec["st"])
        st["state"] = State(st["state"])
        st["timers"] = frozenset(TimerKind(k) for k in st["timers"])
        st["last_exit"] = core.ExitStatus(**st["last_exit"]) if st["last_exit"] else None
        if st["state"] not in GONE and st["state"] is not State.BACKOFF and inst.pidfd is None:
            continue   # its process is gone: adoption already handled it
        live_pid = inst.st.pid
        for t in inst.timers.values():
            t.cancel()
        inst.timers.clear()
        inst.st = InstanceState(**st)
        if live_pid is not None and inst.st.pid != live_pid:
            inst.st = dataclasses.replace(inst.st, pid=live_pid)
        inst.incarnation = rec["incarnation"]
        for kind, when in rec["deadlines"].items():
            rt.arm_timer(inst, TimerKind(kind), when)
        restored.add(name)
    return restored
