"""The core's table is complete, and the core is pure.

Completeness: every (state, event type) pair is exactly one of handled (TRANSITIONS), ignored on
purpose (IGNORED: step returns the same record and no actions) or a programming error (ERRORS:
step raises TransitionError). A new state or event type fails here until someone decides.

Purity: importing supervisor.core pulls in no module that does I/O, and no file in
supervisor/core/ imports one (checked on the source, so a lazy import inside a function counts).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import supervisor.core
from supervisor.core import (
    Adopted,
    Event,
    Exited,
    ExitedWhileAway,
    ExitStatus,
    ExitStatusLearned,
    HeartbeatStale,
    InstanceState,
    IntentRestored,
    Policy,
    ReadyReported,
    Spawned,
    SpawnFailed,
    StartRequested,
    State,
    StopRequested,
    TimerFired,
    TimerKind,
    TransitionError,
    Unverifiable,
    step,
)
from supervisor.core.machine import ERRORS, EVENT_TYPES, IGNORED, TRANSITIONS
from supervisor.core.rules import TIMERS_FOR

CORE_DIR = Path(supervisor.core.__file__).parent
FORBIDDEN_IMPORTS = {"os", "signal", "time", "psutil", "posix_ipc", "loguru", "subprocess",
                     "socket"}
FORBIDDEN_LOADED = ["psutil", "posix_ipc", "loguru", "subprocess", "socket", "signal",
                    "selectors"]

SAMPLE_EVENTS: dict[type, Event] = {
    StartRequested: StartRequested(1.0),
    StopRequested: StopRequested(1.0),
    Spawned: Spawned(1.0, 10),
    SpawnFailed: SpawnFailed(1.0, "nope"),
    ReadyReported: ReadyReported(1.0),
    TimerFired: TimerFired(1.0, TimerKind.START),
    Exited: Exited(1.0, ExitStatus(code=1)),
    HeartbeatStale: HeartbeatStale(1.0, 30.0),
    Adopted: Adopted(1.0, 10, True, 0.5),
    ExitedWhileAway: ExitedWhileAway(1.0, ExitStatus(code=1)),
    ExitStatusLearned: ExitStatusLearned(1.0, ExitStatus(code=0)),
    IntentRestored: IntentRestored(1.0, False),
    Unverifiable: Unverifiable(1.0, "cannot read /proc/10"),
}


def _pair_id(pair: tuple[State, type]) -> str:
    return f"{pair[0].value}-{pair[1].__name__}"


IGNORED_PAIRS = sorted(IGNORED, key=_pair_id)
ERROR_PAIRS = sorted(ERRORS, key=_pair_id)


def test_event_types_cover_the_event_union() -> None:
    assert set(EVENT_TYPES) == set(Event.__args__), "EVENT_TYPES out of step with types.Event"
    assert set(SAMPLE_EVENTS) == set(EVENT_TYPES)


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_every_pair_is_handled_ignored_or_an_error(state: State, event_type: type) -> None:
    pair = (state, event_type)
    where = [name for name, table in (("TRANSITIONS", TRANSITIONS), ("IGNORED", IGNORED),
                                      ("ERRORS", ERRORS)) if pair in table]
    assert len(where) == 1, f"{state.value} + {event_type.__name__} is in {where or 'nothing'}"


@pytest.mark.parametrize("pair", IGNORED_PAIRS, ids=_pair_id)
def test_ignored_pairs_change_nothing(pair: tuple[State, type]) -> None:
    state, event_type = pair
    # with every timer kind the state allows armed, so a TimerFired would not be merely stale
    inst = InstanceState(state=state, pid=10, started_at=0.0, timers=TIMERS_FOR[state])
    assert step(inst, SAMPLE_EVENTS[event_type], Policy()) == (inst, [])


@pytest.mark.parametrize("pair", ERROR_PAIRS, ids=_pair_id)
def test_error_pairs_raise(pair: tuple[State, type]) -> None:
    state, event_type = pair
    with pytest.raises(TransitionError):
        step(InstanceState(state=state), SAMPLE_EVENTS[event_type], Policy())


def test_no_core_source_imports_io_modules() -> None:
    found = []
    for path in sorted(CORE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.name}:{node.lineno}: {n}" for n in names
                      if n.split(".")[0] in FORBIDDEN_IMPORTS]
    assert found == [], f"supervisor/core imports I/O modules: {found}"
    assert {p.name for p in CORE_DIR.glob("*.py")} >= {"__init__.py", "machine.py", "types.py"}


def test_importing_the_core_loads_no_io_modules() -> None:
    code = ("import json, sys\n"
            "before = set(sys.modules)\n"
            "import supervisor.core\n"
            f"print(json.dumps(sorted(m for m in {FORBIDDEN_LOADED!r} "
            "if m in sys.modules and m not in before)))\n")
    root = CORE_DIR.parent.parent       # -S: no site-packages; the core needs the stdlib only
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=root, env={"PYTHONPATH": str(root)}, check=False)
    assert proc.returncode == 0, f"child failed: {proc.stderr}"
    assert json.loads(proc.stdout) == [], f"importing supervisor.core loaded {proc.stdout}"
