"""A reload leaves nothing of the config it replaced alive: instances of unchanged workers
take the new config's equal objects, and the spawn's config-hash cache holds its configs
weakly (it held every config it had ever hashed: one set per reload that restarted them)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.config import Config, load_config
from supervisor.loop import Loop
from supervisor.reconcile import apply_config
from supervisor.runtime import Runtime, config_hash


def write(tmp_path: Path, command: str) -> Config:
    path = tmp_path / "app.yaml"
    path.write_text(f"""supervisor: {{socket: {tmp_path}/s.sock, cgroups: false}}
workers:
  same: {{command: [sleep, '1'], numprocs: 2, autostart: false}}
  changed: {{command: [{command}, '1'], autostart: false}}
""")
    return load_config(str(path))


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    loop = Loop()
    rt = Runtime(loop, write(tmp_path, "sleep"))
    for name in rt.config.start_order():
        rt.add_worker(name, rt.config.workers[name])
    try:
        yield rt
    finally:
        rt.close()
        loop.close()


def test_a_reload_keeps_no_object_of_the_old_config_alive(runtime: Runtime,
                                                          tmp_path: Path) -> None:
    rt = runtime
    for inst in rt.instances.values():
        config_hash(inst.cfg)                         # as their spawns would
    old = rt.config
    gone: list[weakref.ref[object]] = [weakref.ref(old)]
    gone += [weakref.ref(w) for w in old.workers.values()]
    new = write(tmp_path, "true")
    apply_config(rt, old, new)
    rt.config = new
    del old
    gc.collect()
    assert [r() for r in gone] == [None, None, None]
    assert all(i.cfg is new.workers[i.worker] for i in rt.instances.values())
    assert config_hash(new.workers["same"]) == config_hash(write(tmp_path, "x").workers["same"])
