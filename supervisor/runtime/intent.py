"""What the operator asked for, kept where only the daemon can write it, across its own death.

For each instance the core's ``wanted`` (started / stopped, when the operator said anything),
its restart count (for metrics) and a stop in flight (graceful or not, its deadline, whether
a start follows). The file lives in the daemon's private runtime directory
(safefs.private_dir), is replaced atomically, and is written at most once per loop turn
however many instances changed; the end of a stop (no process left, nothing else changed)
lazily instead: LAZY seconds after the last such end, and at most LAZY_MAX seconds after the
first one waiting. The file is O(instances) to write, 10,000 exits come over many turns for a
second or more, and the stop entry it removes is only stale meanwhile (a new daemon reads a
stop entry only for a live process it adopts, and an instance with none gets one only through
a start, which is written at once). A stop (or restart) is on disk before its signals go out
(or its graceful stop is posted): a batch's (a stop all) by the whole file, once for all, the
bookkeeping after them taking a second at 10,000; one instance's (before_step) by one line
appended to a journal beside the file, O(1) where the file is O(instances), the file written
at the end of the turn as for any change. Each file carries a generation, each journal line
the generation of the file that will cover it: a line is applied over a file older than it,
and the journal is removed after each file written. A new daemon reads them
before it starts anything: a stop you asked for is never followed by a restart, even across a
SIGKILL of the daemon, and a stop in flight carries on with its original deadline.

A clean shutdown removes the file (the next start follows the config's autostart again, as
after any orderly stop of a supervisor). A file from another boot is ignored: its monotonic
deadlines mean nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING, Any

from loguru import logger

from supervisor import core, paths, safefs
from supervisor.core import State, StopInFlight, TimerKind
from supervisor.loop import Timer
from supervisor.runtime.instance import Instance
from worker import block as blk

if TYPE_CHECKING:
    from supervisor.runtime.runtime import Runtime

MAX_INTENT = 64 * 1024 * 1024
LAZY = 0.5        # seconds without another end of a stop before the ends are recorded
LAZY_MAX = 5.0    # seconds: how late the end of a stop may be recorded at most


class Intent:
    def __init__(self, rt: Runtime, prefix: str) -> None:
        self.rt = rt
        self.name = f"intent-{prefix}.json"
        self.journal = f"intent-{prefix}.journal"
        self.gen = 0                    # the generation of the last file written (or read)
        self._journaled = False         # a journal line since that file
        self.enabled = True
        self._pending: Timer | None = None
        self._urgent = False            # the pending write is for a change that cannot wait
        self._lazy_first: float | None = None   # the first lazy change not written yet
        self._lazy_last = 0.0                     # ... and the last

    # -- writing ----------------------------------------------------------------------------
    def changed(self, lazy: bool = False) -> None:
        """Something the file records changed: write it once this loop turn is over (lazy:
        once such changes pause for LAZY seconds, within LAZY_MAX)."""
        if not self.enabled:
            return
        now = self.rt.now()
        if lazy:
            if self._lazy_first is None:
                self._lazy_first = now
            self._lazy_last = now
            when = now + LAZY
        else:
            self._urgent = True
            when = now
        t = self._pending
        if t is not None and not t.cancelled and t.when <= when:
            return
        if t is not None:
            t.cancel()
        self._pending = self.rt.loop.call_at(when, self._due)

    def _due(self) -> None:
        now = self.rt.now()
        first = self._lazy_first if self._lazy_first is not None else now
        later = min(self._lazy_last + LAZY, first + LAZY_MAX)
        if not self._urgent and later > now:     # lazy changes still coming: one write later
            self._pending = self.rt.loop.call_at(later, self._due)
            return
        self.write()

    def before_signals(self, stepped: Iterable[tuple[Instance, Any, core.InstanceState,
                                                      list[core.Action]]]) -> None:
        """A batch (stop all, restart all): what was asked is on disk before its signals go
        out (the bookkeeping after them takes a second at 10,000, and a daemon killed
        meanwhile restarted every instance that had exited, or left stopped every one being
        restarted). The stops begun are not armed yet: their graceful deadline is their
        PostStop's."""
        begun: dict[int, tuple[bool, float]] = {}
        asked = False
        for inst, _event, before, actions in stepped:
            st = inst.st
            asked = asked or st.wanted != before.wanted or (
                st.restart_after_stop and not before.restart_after_stop)
            if st.state is State.STOPPING and before.state is not State.STOPPING:
                post = [a for a in actions if isinstance(a, core.PostStop)]
                begun[id(inst)] = (bool(post), post[0].deadline if post else 0.0)
        if asked:
            self.write(begun)

    def before_step(self, inst: Instance, before: core.InstanceState,
                    actions: list[core.Action]) -> None:
        """One step outside a batch (a stop or restart of one instance, its signal or posted
        stop not out yet): what was asked is on disk first, as a batch's is (written only at
        the end of the turn, a daemon SIGKILLed after the signal left no record of the stop,
        and its successor restarted the instance that had exited): inst's record, one line
        appended to the journal. The file follows at the end of the turn (changed())."""
        st = inst.st
        if not self.enabled or not (st.wanted != before.wanted or (
                st.restart_after_stop and not before.restart_after_stop)) or not any(
                isinstance(a, core.Signal | core.PostStop) for a in actions):
            return
        begun = None
        if st.state is State.STOPPING and before.state is not State.STOPPING:
            post = [a for a in actions if isinstance(a, core.PostStop)]
            begun = (bool(post), post[0].deadline if post else 0.0)
        key = _key(inst, begun)
        line = json.dumps({"boot_id": blk.read_boot_id().hex(), "gen": self.gen + 1,
                           "name": inst.name, "record": None if key is None else _record(key)})
        try:
            dfd = safefs.private_dir(paths.runtime_dir())
            try:
                fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                # one write; the line begins on a line of its own: the last one may be torn
                # (a daemon killed in its write, a short write on a full disk) and would glue
                # this one to it, both then ignored
                data = b"\n" + line.encode() + b"\n"
                try:
                    if os.write(fd, data) != len(data):
                        raise OSError(errno.ENOSPC, "a short write")
                finally:
                    os.close(fd)
            finally:
                os.close(dfd)
            self._journaled = True
        except OSError as e:
            logger.error(f"cannot record what was asked in {self.journal}: {e}; a daemon "
                         "crash before the end of this turn would forget it")

    def write(self, begun: Mapping[int, tuple[bool, float]] | None = None) -> None:
        """The file, now. ``begun``: id(inst) -> (graceful, deadline) of stops stepped whose
        timers are not armed yet (before_signals)."""
        if self._pending is not None:
            self._pending.cancel()     # (the timer that runs this, or one made moot by it)
            self._pending = None
        self._urgent = False
        self._lazy_first = None
        if not self.enabled:
            return
        self.gen += 1
        data = encode(blk.read_boot_id().hex(), self.rt.instances.values(), begun or {},
                      self.gen)
        try:
            dfd = safefs.private_dir(paths.runtime_dir())
            try:
                safefs.write_atomic(dfd, self.name, data)
                if self._journaled:          # every line in it is in the file now
                    self._journaled = False
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.journal, dir_fd=dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            logger.error(f"cannot record what was asked in {self.name}: {e}; a daemon crash "
                         "now would forget it")

    def remove(self) -> None:
        self.enabled = False
        with contextlib.suppress(OSError):
            dfd = safefs.private_dir(paths.runtime_dir(), create=False)
            try:
                for name in (self.name, self.journal):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=dfd)
            finally:
                os.close(dfd)

    # -- reading ----------------------------------------------------------------------------
    def load(self) -> dict[str, dict[str, Any]]:
        """The records the previous daemon left ({} when none, or unusable: said why): its
        file, and over it the journal's lines newer than the file."""
        try:
            dfd = safefs.private_dir(paths.runtime_dir(), create=False)
        except OSError:
            return {}
        try:
            doc = _read_json(dfd, self.name, lambda text: json.loads(text))
            lines = _read_json(dfd, self.journal, lambda text: [
                _line(one) for one in text.splitlines()])
        finally:
            os.close(dfd)
        boot = blk.read_boot_id().hex()
        found: dict[str, dict[str, Any]] = {}
        gen = 0
        if isinstance(doc, dict) and doc.get("boot_id") == boot:
            gen = _count(doc.get("gen"))
            recs = doc.get("instances")
            found = {k: v for k, v in recs.items() if isinstance(v, dict)} if isinstance(
                recs, dict) else {}
        self.gen = max(self.gen, gen)
        for one in lines if isinstance(lines, list) else ():
            if not isinstance(one, dict) or one.get("boot_id") != boot or not isinstance(
                    name := one.get("name"), str) or (line_gen := _count(one.get("gen"))) <= gen:
                continue                    # another boot's, torn, or in the file already
            self.gen = max(self.gen, line_gen)
            rec = one.get("record")
            if isinstance(rec, dict):
                found[name] = rec
            else:
                found.pop(name, None)
        return found


def _read_json(dfd: int, name: str, parse: Callable[[bytes], Any]) -> Any:
    path = os.path.join(paths.runtime_dir(), name)
    try:
        return parse(safefs.read_small(dfd, name, path, MAX_INTENT, os.geteuid()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:
        logger.warning(f"ignoring {path}: {e}")
        return None


def _line(text: bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None                  # a torn line: the others still count


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and (
        0 <= value < MAX_RESTARTS) else 0


Key = tuple[bool | None, int, tuple[bool, float, bool] | None, str | None]
ENDED = frozenset({State.EXITED, State.FATAL})   # ended for good: recorded, never restarted


def _key(inst: Instance, begun: tuple[bool, float] | None = None) -> Key | None:
    """What inst's record holds (None: nothing to record): wanted, restarts, the stop in
    flight (graceful, its deadline, restart after); ``begun``: the stop's (graceful,
    deadline) when its timers are not armed yet."""
    st = inst.st
    stop = None
    if st.state is State.STOPPING and st.pid is not None:
        graceful = inst.timers.get(TimerKind.GRACEFUL)
        if begun is not None:
            stop = (*begun, st.restart_after_stop)
        else:
            stop = (graceful is not None, graceful.when if graceful is not None else 0.0,
                    st.restart_after_stop)
    ended = st.state.name if st.state in ENDED else None
    if st.wanted is None and not st.restarts and stop is None and ended is None:
        return None
    return st.wanted, st.restarts, stop, ended


def _record(key: Key) -> dict[str, Any]:
    wanted, restarts, stop, ended = key
    rec: dict[str, Any] = {}
    if ended is not None:
        rec["ended"] = ended
    if wanted is not None:
        rec["wanted"] = wanted
    if restarts:
        rec["restarts"] = restarts
    if stop is not None:
        rec["stop"] = {"graceful": stop[0], "deadline": stop[1], "restart": stop[2]}
    return rec


def encode(boot_id: str, instances: Iterable[Instance],
           begun: Mapping[int, tuple[bool, float]] | None = None, gen: int = 0) -> bytes:
    """The file: {"boot_id": ..., "gen": N, "instances": {name: record}}, as json.dumps
    writes it. At 10,000 instances most records are alike (after a stop all: all of them), so
    each distinct record is encoded once and the text is joined; json.dumps of the whole is
    several times slower, and this write comes right after a stop all's signals."""
    texts: dict[Key, str] = {}
    parts = []
    begun = begun or {}
    for inst in instances:
        key = _key(inst, begun.get(id(inst)))
        if key is None:
            continue
        text = texts.get(key)
        if text is None:
            text = texts[key] = json.dumps(_record(key))
        parts.append(f"{_quote(inst.name)}: {text}")
    return (f'{{"boot_id": {_quote(boot_id)}, "gen": {gen}, '
            f'"instances": {{{", ".join(parts)}}}}}'.encode())


def ended_of(rec: dict[str, Any]) -> State | None:
    """EXITED or FATAL: where the instance had ended (None: anything else)."""
    value = rec.get("ended")
    return State[value] if value in ("EXITED", "FATAL") else None


def wanted_of(rec: dict[str, Any]) -> bool | None:
    value = rec.get("wanted")
    return value if isinstance(value, bool) else None


MAX_RESTARTS = 1 << 53


def restarts_of(rec: dict[str, Any]) -> int:
    """The recorded restart count (0 when absent or not a count within bounds)."""
    value = rec.get("restarts")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_RESTARTS:
        return 0
    return value


def stop_of(rec: dict[str, Any]) -> StopInFlight | None:
    stop = rec.get("stop")
    if not isinstance(stop, dict):
        return None
    graceful, deadline, restart = stop.get("graceful"), stop.get("deadline"), stop.get("restart")
    if not isinstance(graceful, bool) or not isinstance(restart, bool) or not isinstance(
            deadline, int | float) or isinstance(deadline, bool):
        return None
    try:
        value = float(deadline)
    except OverflowError:          # an int of 400 digits
        return None
    return StopInFlight(graceful, value, restart) if math.isfinite(value) else None
