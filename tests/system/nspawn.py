"""A real systemd for tests: ``systemd-nspawn -b`` on an overlay of this machine's own root.

The machine's own PID 1 is not systemd, so the system tests boot one in a container:

  helper (this file run as ``python -m tests.system.nspawn serve``, under ``unshare --mount
  --propagation private``)
    1. joins a cgroup of its own (so nspawn's payload group does not land in the root cgroup;
       hybrid layout here: v1 name=systemd + cgroup2 at /sys/fs/cgroup/unified),
    2. mounts a tmpfs on /run (nspawn keeps state in /run/systemd/nspawn),
    3. mounts overlayfs: lower = / (read-only use), upper = a tmpfs; masks units that cannot
       start in a container and writes a fresh machine-id,
    4. runs ``systemd-nspawn -b --register=no --keep-unit --rlimit=RLIMIT_NOFILE=...``
       (no host systemd/machined to register with; this machine's bounding set lacks
       CAP_SYS_RESOURCE, so nspawn's default NOFILE hard limit would make the container
       silently never start),
    5. prints ``LEADER <host pid of the container's systemd>`` and waits for EOF on stdin
       (the test process went away) or SIGTERM, then halts the container (SIGTERM to nspawn =
       clean poweroff), SIGKILL after a deadline.
  Every mount lives in the helper's private mount namespace and disappears with it; the test
  side removes the (then empty) cgroups. Leftovers of a SIGKILLed run are swept at the next.

The test side (:class:`Container`) runs commands inside with ``nsenter`` into all of the
container's namespaces, with a clean environment, and reads/writes its files through
``/proc/LEADER/root``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, TypeVar

from tests.support.wait import Abort, WaitTimeout, wait_until

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
CGROUP_PREFIX = "pyvisor-nspawn-"
DEFAULT_MASK = ("postgresql.service", "postgresql@.service")
CT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class NspawnError(RuntimeError):
    pass


class Spec(TypedDict):
    """What boot() hands the helper (as JSON on its command line)."""

    nspawn: str
    workdir: str
    log: str
    binds_ro: list[str]
    mask: list[str]
    remove: list[str]
    boot_unit: str
    machine: str
    timeout: float


# --------------------------------------------------------------------------- host preparation
def require_root() -> None:
    """Skip (outside CI) when not root; CI runs the system tests as root."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip("needs root: systemd-nspawn / PID namespaces (CI runs these as root)")


def ensure_nspawn() -> str:
    """Path of systemd-nspawn; installs systemd-container (pinned to the installed systemd
    version, so apt never upgrades systemd itself) when it is missing."""
    found = shutil.which("systemd-nspawn")
    if found:
        return found
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "systemd"],
        check=False, capture_output=True, text=True,
    ).stdout.strip()
    apt = ["apt-get", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*apt, "update"], check=False, capture_output=True, env=env, timeout=600)
    attempts = [f"systemd-container={version}"] if version else []
    attempts.append("systemd-container")
    errors = []
    for pkg in attempts:
        proc = subprocess.run(
            [*apt, "install", "--no-install-recommends", pkg],
            check=False, capture_output=True, text=True, env=env, timeout=600,
        )
        if proc.returncode == 0 and shutil.which("systemd-nspawn"):
            return str(shutil.which("systemd-nspawn"))
        errors.append(f"apt-get install {pkg}: rc={proc.returncode} {proc.stderr[-500:]}")
    raise NspawnError("cannot install systemd-container:\n" + "\n".join(errors))


def cgroup_roots() -> list[Path]:
    """The hierarchies nspawn needs a group in: v1 name=systemd + v2 (hybrid), or pure v2."""
    base = Path("/sys/fs/cgroup")
    if (base / "systemd").is_dir() and (base / "unified").is_dir():
        return [base / "systemd", base / "unified"]
    if (base / "cgroup.controllers").is_file():
        return [base]
    return []


def remove_cgroup_tree(path: Path) -> None:
    """rmdir a cgroup and its children, deepest first (only empty groups can be removed)."""
    if not path.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def sweep_stale_cgroups() -> None:
    """Remove groups left by a SIGKILLed earlier run (named after a helper pid that is gone)."""
    for root in cgroup_roots():
        for d in root.glob(CGROUP_PREFIX + "*"):
            pid = d.name[len(CGROUP_PREFIX):]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                remove_cgroup_tree(d)


# --------------------------------------------------------------------------- the container
@dataclass
class Container:
    """A booted container; :meth:`ct` runs a command inside it."""

    leader: int                 # host pid of the container's PID 1 (systemd)
    helper: subprocess.Popen[str]
    workdir: Path
    log_path: Path
    cgroup_name: str
    boot_state: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def ct(
        self, *cmd: str, check: bool = False, timeout: float = 60, input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd inside every namespace of the container, with a clean environment."""
        envs = [f"{k}={v}" for k, v in (env or {}).items()]
        argv = [
            "nsenter", "--target", str(self.leader),
            "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--",
            "env", "-i", f"PATH={CT_PATH}", "LANG=C.UTF-8", "SYSTEMD_PAGER=",
            "SYSTEMD_COLORS=0", *envs, *cmd,
        ]
        proc = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=timeout, input=input,
        )
        if check and proc.returncode != 0:
            raise NspawnError(
                f"in container: {shlex.join(cmd)} -> rc={proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def sh(
        self, script: str, *, check: bool = False, timeout: float = 60, input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self.ct("sh", "-c", script, check=check, timeout=timeout, input=input, env=env)

    def path(self, inside: str) -> Path:
        """Host path of a file inside the container (through /proc/LEADER/root)."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        p = self.path(inside)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)

    def prop(self, unit: str, name: str) -> str:
        return self.ct("systemctl", "show", "-p", name, "--value", unit).stdout.strip()

    def journal(self, unit: str | None = None, lines: int = 200, after: str = "") -> str:
        """The last lines of the journal (of a unit), optionally only after a cursor."""
        self.ct("journalctl", "--sync")  # journald writes asynchronously
        args = ["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines)]
        args += ["-u", unit] if unit else ["-b"]
        args += [f"--after-cursor={after}"] if after else []
        return self.ct(*args).stdout

    def journal_cursor(self) -> str:
        """A cursor at the journal's current end (for journal(after=...))."""
        self.ct("journalctl", "--sync")
        out = self.ct("journalctl", "-n", "1", "--show-cursor", "--no-pager", "-q").stdout
        for line in out.splitlines():
            if line.startswith("-- cursor: "):
                return line[len("-- cursor: "):].strip()
        return ""

    def wait_for(
        self, what: str, probe: Callable[[], T | None], timeout: float = 20.0,
        interval: float = 0.2, show: Callable[[], str] | None = None,
    ) -> T:
        """Poll probe() until truthy; on timeout fail with the last value (and show())."""
        return wait_until(probe, timeout, what, interval=interval, show=show)

    def halt(self, timeout: float = 30.0) -> int | None:
        """Close the helper's stdin: it halts the container and unmounts; then remove cgroups."""
        try:
            if self.helper.stdin and not self.helper.stdin.closed:
                self.helper.stdin.close()
        except OSError:
            pass
        try:
            rc = self.helper.wait(timeout)
        except subprocess.TimeoutExpired:
            self.helper.send_signal(signal.SIGKILL)
            rc = self.helper.wait(10)
        for root in cgroup_roots():
            remove_cgroup_tree(root / self.cgroup_name)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return rc


def boot(
    workdir: Path,
    *,
    binds_ro: Sequence[str] = (),
    mask: Sequence[str] = DEFAULT_MASK,
    remove: Sequence[str] = (),
    boot_unit: str = "multi-user.target",
    timeout: float = 60.0,
) -> Container:
    """Boot a container on an overlay of /; returns once its systemd finished booting.

    binds_ro: host paths bound read-only at the same place; mask: units masked; remove:
    paths deleted from the container's root before boot (whatever the host has there)."""
    if os.geteuid() != 0:
        raise NspawnError("systemd-nspawn needs root")
    nspawn = ensure_nspawn()
    sweep_stale_cgroups()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "nspawn.log"
    spec: Spec = {
        "nspawn": nspawn, "workdir": str(workdir), "log": str(log_path),
        "binds_ro": list(binds_ro), "mask": list(mask), "remove": list(remove),
        "boot_unit": boot_unit,
        "machine": "pyvt" + uuid.uuid4().hex[:10], "timeout": timeout,
    }
    t0 = time.monotonic()
    helper = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--",
         sys.executable, "-m", "tests.system.nspawn", "serve", json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=REPO,  # where `-m` finds this module (and tests.support)
    )
    cgroup_name = f"{CGROUP_PREFIX}{helper.pid}"  # unshare execs the helper: same pid
    lines: list[str] = []
    leader = 0
    assert helper.stdout is not None
    for line in helper.stdout:  # the helper enforces its own deadline and exits on failure
        lines.append(line.rstrip())
        if line.startswith("LEADER "):
            leader = int(line.split()[1])
            break
    container = Container(leader, helper, workdir, log_path, cgroup_name)
    if not leader:
        container.halt()
        raise NspawnError("container did not start:\n" + "\n".join(lines))
    container.timings["nspawn"] = time.monotonic() - t0

    def system_state() -> str:
        proc = container.ct("timeout", str(int(timeout)), "systemctl", "is-system-running",
                            "--wait", timeout=timeout + 5)
        return proc.stdout.strip()

    try:
        state = wait_until(system_state, timeout, "the container to finish booting",
                           ok=lambda s: s in ("running", "degraded"), interval=0.2)
    except WaitTimeout as e:
        state = e.last if isinstance(e.last, str) else ""
    container.boot_state = state
    container.timings["boot"] = time.monotonic() - t0
    if state not in ("running", "degraded"):
        log = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
        container.halt()
        raise NspawnError(f"container did not finish booting (state={state!r})\n{log}")
    return container


# --------------------------------------------------------------------------- the helper
def _join_cgroups(name: str) -> None:
    for root in cgroup_roots():
        d = root / name
        d.mkdir(exist_ok=True)
        (d / "cgroup.procs").write_text(str(os.getpid()))


def _find_leader(nspawn_pid: int) -> int:
    my_ns = os.readlink("/proc/self/ns/pid")
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        return 0
    for child in children:
        try:
            if (os.readlink(f"/proc/{child}/ns/pid") != my_ns
                    and Path(f"/proc/{child}/comm").read_text().strip() == "systemd"):
                return int(child)
        except OSError:
            continue
    return 0


def _serve(spec: Spec) -> int:
    workdir = Path(spec["workdir"])
    timeout = float(spec["timeout"])
    _join_cgroups(f"{CGROUP_PREFIX}{os.getpid()}")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run"], check=True)
    ovl = workdir / "ovl"
    ovl.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(ovl)], check=True)
    for d in ("upper", "work", "merged"):
        (ovl / d).mkdir()
    merged = ovl / "merged"
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir=/,upperdir={ovl / 'upper'},workdir={ovl / 'work'}", str(merged)],
        check=True,
    )
    for path in spec["remove"]:
        target = merged / path.lstrip("/")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    for unit in spec["mask"]:
        link = merged / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    (merged / "etc/machine-id").unlink(missing_ok=True)
    (merged / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")

    env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard_s = "524288" if hard == resource.RLIM_INFINITY else str(hard)
    binds = [f"--bind-ro={p}" for p in spec["binds_ro"]]
    with open(spec["log"], "w") as log:
        nspawn = subprocess.Popen(
            ["setpriv", "--pdeathsig", "TERM", "--", spec["nspawn"], "--quiet",
             "-D", str(merged), f"--machine={spec['machine']}", "--register=no", "--keep-unit",
             "--private-network", "--console=pipe", f"--rlimit=RLIMIT_NOFILE=1024:{hard_s}",
             *binds, "-b", "--", f"--unit={spec['boot_unit']}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )

    def halt(*_: object) -> None:
        if nspawn.poll() is None:
            nspawn.send_signal(signal.SIGTERM)  # nspawn: SIGRTMIN+3 to systemd -> poweroff
            try:
                nspawn.wait(30)
            except subprocess.TimeoutExpired:
                nspawn.kill()
                nspawn.wait(10)

    def on_term(*_: object) -> None:
        halt()
        os._exit(143)

    signal.signal(signal.SIGTERM, on_term)

    def container_pid1() -> int:
        if nspawn.poll() is not None:
            raise Abort(f"systemd-nspawn exited {nspawn.returncode}")
        return _find_leader(nspawn.pid)

    try:
        leader = wait_until(container_pid1, timeout, "the container's PID 1", interval=0.05)
    except (WaitTimeout, Abort):
        leader = 0
    if not leader:
        halt()
        print(f"no container PID 1 appeared (nspawn rc={nspawn.poll()}); log:", flush=True)
        print(Path(spec["log"]).read_text(errors="replace")[-4000:], flush=True)
        return 1
    print(f"LEADER {leader}", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or dies)
    halt()
    rc = nspawn.returncode
    print(f"HALTED rc={rc}", flush=True)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        sys.exit(_serve(json.loads(sys.argv[2])))
    sys.exit("usage: python -m tests.system.nspawn serve SPEC_JSON "
             "(run by boot(), under unshare --mount)")
