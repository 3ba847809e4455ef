"""Fixtures for tests against a real systemd (systemd-nspawn, root only).

One container per test module (booting takes ~1 s on an overlay of /, but state such as
restart counters and journals is easier to reason about per module).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import nspawn

REPO = Path(__file__).resolve().parents[2]
INSTALL_PREFIX = "/opt/pyvisor"   # where systemd/supervisord.service expects the venv


# A pyvisor install the host may have: the container must start from a clean slate.
HOST_LEFTOVERS = (
    "/etc/systemd/system/supervisord.service",
    "/etc/systemd/system/supervisord.service.d",
    "/etc/systemd/system/multi-user.target.wants/supervisord.service",
    INSTALL_PREFIX,
    "/etc/pyvisor",
)


def venv_binds() -> list[str]:
    """Host paths the test venv needs inside the container: the checkout (editable install),
    the venv and the interpreter it was made from, at the same paths (venvs are not
    relocatable). The container's root is an overlay of the host's root file system, but
    that does not descend into other mounts, and the container's systemd mounts a tmpfs on
    /tmp (where a checkout may well live): so all three are always bound read-only."""
    paths = {str(REPO), os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    out: list[str] = []
    for p in sorted(paths, key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Container]:
    nspawn.require_root()
    workdir = tmp_path_factory.mktemp("nspawn")
    c = nspawn.boot(workdir, binds_ro=venv_binds(), remove=HOST_LEFTOVERS)
    try:
        # The unit's install prefix is a link to the test venv (same paths as on the host).
        link = c.path(INSTALL_PREFIX)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.realpath(sys.prefix))
        yield c
    finally:
        rc = c.halt()
        assert rc == 0, f"container did not halt cleanly (helper rc={rc}); log {c.log_path}"
