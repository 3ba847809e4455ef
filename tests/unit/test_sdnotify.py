"""supervisor.sdnotify against real AF_UNIX datagram sockets (a path and the abstract namespace)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.sdnotify import ENV_KEYS, Notifier, scrub_env


class Receiver:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value  # what systemd would put in $NOTIFY_SOCKET

    def recv(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(65536).decode()

    def assert_empty(self) -> None:
        self.sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            data = self.sock.recv(65536)
            pytest.fail(f"unexpected datagram: {data!r}")


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if request.param == "path":
            path = str(tmp_path / "notify.sock")
            sock.bind(path)
            yield Receiver(sock, path)
        else:
            name = f"pyvisor-test-{uuid.uuid4().hex}"
            sock.bind("\0" + name)
            yield Receiver(sock, "@" + name)
    finally:
        sock.close()


def make(receiver: Receiver, **extra: str) -> Notifier:
    return Notifier.from_env({"NOTIFY_SOCKET": receiver.env_value, **extra})


def test_messages(receiver: Receiver) -> None:
    n = make(receiver)
    assert n.enabled
    assert n.ready() is True
    assert receiver.recv() == "READY=1"
    assert n.ready("3 running, 0 starting, 0 fatal")
    assert receiver.recv() == "READY=1\nSTATUS=3 running, 0 starting, 0 fatal"
    assert n.status("12 running, 0 starting, 0 fatal")
    assert receiver.recv() == "STATUS=12 running, 0 starting, 0 fatal"
    assert n.stopping()
    assert receiver.recv() == "STOPPING=1"
    assert n.watchdog()
    assert receiver.recv() == "WATCHDOG=1"
    assert n.mainpid(4242)
    assert receiver.recv() == "MAINPID=4242"
    n.close()


def test_reloading_carries_monotonic_usec(receiver: Receiver) -> None:
    n = make(receiver)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = receiver.recv().split("\n")
    assert lines[0] == "RELOADING=1", lines
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC", lines
    assert before <= int(value) <= after, (before, value, after)


def test_status_newlines_cannot_inject_assignments(receiver: Receiver) -> None:
    n = make(receiver)
    assert n.status("a\nREADY=1")
    assert receiver.recv() == "STATUS=a READY=1"


def test_no_socket_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False
    assert n.status("x") is False
    assert n.reloading() is False
    assert n.stopping() is False
    assert n.watchdog() is False
    assert n.mainpid(1) is False
    assert n.watchdog_interval() is None


@pytest.mark.parametrize("value", ["", "@", "relative/path", "vsock:2:1234"])
def test_unusable_address_is_a_noop(value: str) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": value})
    assert not n.enabled
    assert n.ready() is False


def test_send_errors_return_false_and_recover(tmp_path: Path) -> None:
    path = str(tmp_path / "later.sock")
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.ready() is False  # nobody bound there yet: ENOENT, swallowed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        assert n.ready() is True  # heals once the socket exists
        sock.settimeout(2)
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()
    os.unlink(path)
    assert n.watchdog() is False  # socket gone again: ECONNREFUSED/ENOENT, swallowed


def test_full_queue_does_not_block(receiver: Receiver) -> None:
    n = make(receiver)
    deadline = time.monotonic() + 10
    results = []
    # Nobody reads: the receive queue fills and sends must fail fast (EAGAIN), never block.
    while time.monotonic() < deadline:
        ok = n.status("x" * 1000)
        results.append(ok)
        if not ok:
            break
    assert results and results[-1] is False, f"queue never filled after {len(results)} sends"


def test_message_too_big_returns_false(receiver: Receiver) -> None:
    n = make(receiver)
    assert n.status("x" * (4 * 1024 * 1024)) is False
    assert n.ready() is True
    assert receiver.recv() == "READY=1"


def test_watchdog_interval_half_of_usec(receiver: Receiver) -> None:
    n = make(receiver, WATCHDOG_USEC="10000000")
    assert n.watchdog_interval() == pytest.approx(5.0)
    n = make(receiver, WATCHDOG_USEC="3000000", WATCHDOG_PID=str(os.getpid()))
    assert n.watchdog_interval() == pytest.approx(1.5)


@pytest.mark.parametrize(
    "extra",
    [
        {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"},  # someone else's watchdog
        {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "junk"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "junk"},
        {},
    ],
)
def test_watchdog_interval_none(receiver: Receiver, extra: dict[str, str]) -> None:
    assert make(receiver, **extra).watchdog_interval() is None


def test_watchdog_pid_checked_in_a_child(receiver: Receiver) -> None:
    """A child that inherited the parent's variables must not take the watchdog as its own."""
    env = {"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": "2000000",
           "WATCHDOG_PID": str(os.getpid())}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            interval = Notifier.from_env(env).watchdog_interval()
            os.write(w, repr(interval).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        got = os.read(r, 100).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert got == "None", f"child computed a watchdog interval: {got}"


def test_from_env_reads_os_environ_without_changing_it(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier.from_env()
    assert n.ready()
    assert receiver.recv() == "READY=1"
    assert n.watchdog_interval() == pytest.approx(2.0)
    assert os.environ["NOTIFY_SOCKET"] == receiver.env_value  # kept for an in-place re-exec


def test_scrub_env() -> None:
    env = {"PATH": "/bin", "NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2"}
    assert scrub_env(env) == {"PATH": "/bin"}
    assert set(ENV_KEYS) == {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
