"""Ctrl-C (SIGINT) and SIGTERM to the daemon, again and again, during a long graceful stop.

The first starts the graceful shutdown. The second says what the shutdown is waiting for and
how long each wait can still take, so a long ``graceful_timeout`` never looks like a hang.
Every further one hurries it: each stopping instance goes to its next step now (the graceful
wait ends in stop_signal, a kill timeout in SIGKILL), and the workers not yet asked to stop
get signals at once instead of a graceful stop.

``supervisor.shutdown_timeout`` bounds the whole shutdown: when it is over, every stop in
flight, and every one begun later, goes to SIGKILL at once (a unit's TimeoutStopSec is set
from it: past that, systemd SIGKILLs the daemon, and KillMode=process leaves the workers).
"""

from __future__ import annotations

from loguru import logger

from supervisor.core import State, TimerKind
from supervisor.names import signal_name
from supervisor.runtime import Instance, Runtime

SHOWN = 10          # instances named in the "waiting for" line, at most


def waiting_for(rt: Runtime) -> str:
    """'web:0 (graceful stop, up to 8.2 s more, then SIGTERM), db:0 (SIGTERM sent, SIGKILL
    in 3.1 s)' for the instances that are stopping."""
    now = rt.now()
    stopping = [i for i in rt.instances.values() if i.st.state is State.STOPPING]
    parts = [_one(i, now) for i in stopping[:SHOWN]]
    if len(stopping) > SHOWN:
        parts.append(f"and {len(stopping) - SHOWN} more")
    return ", ".join(parts)


def _one(inst: Instance, now: float) -> str:
    graceful, kill = inst.timers.get(TimerKind.GRACEFUL), inst.timers.get(TimerKind.KILL)
    if graceful is not None:
        return (f"{inst.name} (graceful stop, up to {max(0.0, graceful.when - now):.1f} s more, "
                f"then {signal_name(inst.policy.stop_signal)})")
    if kill is not None:
        sent = signal_name(inst.policy.kill_signal if inst.st.kills_sent
                           else inst.policy.stop_signal)
        return (f"{inst.name} ({sent} sent, {signal_name(inst.policy.kill_signal)} in "
                f"{max(0.0, kill.when - now):.1f} s)")
    return f"{inst.name} (its exit)"


class Interrupts:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.count = 0
        self.hurried = False      # later stop levels skip the graceful part
        self.killing = False      # shutdown_timeout is over: every stop goes to SIGKILL now

    def on_signal(self, signum: int, shutting_down: bool) -> bool:
        """Returns whether to begin the shutdown (the first signal)."""
        self.count += 1
        if not shutting_down:
            return True
        what = waiting_for(self.rt)
        if self.count == 2:
            logger.warning(f"{signal_name(signum)} again: still stopping, waiting for "
                           f"{what or 'the next workers to stop'}; send it once more to "
                           "hurry (stop_signal now, then SIGKILL)")
            return False
        self.hurried = True
        stopping = [i for i in self.rt.instances.values() if i.st.state is State.STOPPING]
        names = [i.name for i in stopping[:SHOWN]]
        logger.warning(f"{signal_name(signum)} again: hurrying the stop of "
                       f"{', '.join(names) or 'nothing (no stop in flight)'}"
                       f"{' and more' if len(stopping) > SHOWN else ''}")
        for inst in stopping:
            self.rt.hurry(inst)
        return False

    def past_deadline(self, timeout: float) -> None:
        self.hurried = self.killing = True
        stopping = [i for i in self.rt.instances.values() if i.st.state is State.STOPPING]
        names = ", ".join(i.name for i in stopping[:SHOWN]) + (
            " and more" if len(stopping) > SHOWN else "")
        logger.warning(f"shutdown_timeout ({timeout:g} s) is over: killing what is still "
                       f"stopping ({names or 'nothing yet'}) and every worker stopped later")
        self.kill_now(stopping)

    def kill_now(self, insts: list[Instance]) -> None:
        for inst in insts:
            for _ in range(2):      # a graceful wait -> stop_signal -> SIGKILL
                if inst.st.kills_sent or not self.rt.hurry(inst):
                    break
