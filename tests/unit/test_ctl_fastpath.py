"""The fast path's argument recogniser (supervisor.ctl.main.recognise), on odd and hostile
argument lists: it takes only the simple shapes and leaves everything else to click (None).
That both paths then print the same is tests/e2e/test_ctl_fastpath.py's job."""

from __future__ import annotations

from supervisor import paths
from supervisor.ctl.main import COMPLETE_VAR, Plan, recognise


def test_the_simple_shapes() -> None:
    assert recognise(["-c", "a.yaml", "status"], {}) == Plan("a.yaml", "status", frozenset(), ())
    assert recognise(["--config=a.yaml", "status", "w", "--json", "-v", "w:1"], {}) == Plan(
        "a.yaml", "status", frozenset({"--json", "-v"}), ("w", "w:1"))
    assert recognise(["--config", "a b.yaml", "pid", "all"], {}) == Plan(
        "a b.yaml", "pid", frozenset(), ("all",))
    assert recognise(["pid"], {paths.ENV_CONFIG: "e.yaml"}) == Plan(
        "e.yaml", "pid", frozenset(), ())
    assert recognise(["pid"], {paths.ENV_CONFIG: ""}) == Plan(None, "pid", frozenset(), ())
    assert recognise(["tail", "w:0"], {}) == Plan(None, "tail", frozenset(), ("w:0",), 10)
    assert recognise(["tail", "-n", "0", "w", "--stderr"], {}) == Plan(
        None, "tail", frozenset({"--stderr"}), ("w",), 0)
    assert recognise(["tail", "--lines=007", "w"], {}) == Plan(None, "tail", frozenset(), ("w",), 7)
    # -c wins over the environment, as in click
    assert recognise(["-c", "a.yaml", "pid"], {paths.ENV_CONFIG: "e.yaml"}) == Plan(
        "a.yaml", "pid", frozenset(), ())


def test_everything_else_goes_to_click() -> None:
    for argv in ([], ["-c"], ["-c", "a.yaml"], ["-c", "", "status"], ["--config=", "status"],
                 ["-c", "-v", "status"], ["-ca.yaml", "status"], ["-c", "a", "-c", "b", "pid"],
                 ["status", "-c", "a"], ["pid", "--json"], ["status", "--json=1"],
                 ["status", "--"], ["status", "-"], ["status", "-vj"], ["status", "--help"],
                 ["--timeout", "1", "status"], ["--version"], ["start", "all"], ["STATUS"],
                 ["status", "a b"], ["status", "w\n"], ["status", "w:"], ["status", "w:1234567"],
                 ["status", ".w"], ["status", "x" * 65], ["status", "w\x00"], ["status", ""],
                 ["status", "w\udcff"], ["status", "\u00e9"], ["pid", "all", "w;rm"],
                 ["tail"], ["tail", "a", "b"], ["tail", "w", "-f"], ["tail", "w", "--follow"],
                 ["tail", "w", "--stdout", "--stderr"], ["tail", "w", "--stdout", "--stdout"],
                 ["tail", "w", "-n"], ["tail", "w", "-n", "-1"], ["tail", "w", "-n", "1e3"],
                 ["tail", "w", "-n", "\u0663"], ["tail", "w", "-n", " 1"], ["tail", "w", "-n5"],
                 ["tail", "w", "-n", "1", "--lines", "2"], ["tail", "w", "-n", "9" * 19],
                 ["tail", "w", "--lines="], ["tail", "w", "--json"], ["tail", "-n", "3"]):
        assert recognise(argv, {}) is None, argv
    assert recognise(["status"], {COMPLETE_VAR: "bash_complete"}) is None
    assert recognise(["status"], {COMPLETE_VAR: ""}) is None


def test_huge_argument_lists_are_bounded_work() -> None:
    many = ["status", *(f"w:{i % 1000}" for i in range(100_000))]
    plan = recognise(many, {})
    assert plan is not None and len(plan.targets) == 100_000
    assert recognise(["status", *["w"] * 100_000, "a b"], {}) is None
    assert recognise(["-c", "x" * 1_000_000, "pid"], {}) is not None
