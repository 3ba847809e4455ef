"""Loading a config file: read it, parse the YAML (keeping line numbers), validate the models,
run the whole-config checks, and turn every problem into one line of a ConfigError. Also the
JSON Schema of the file, generated from the models.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from supervisor.config.checks import cross_checks
from supervisor.config.errors import ConfigError, from_validation_error, got, line_text
from supervisor.config.models import (
    BackoffConfig,
    Config,
    LogConfig,
    SupervisorConfig,
    WorkerConfig,
)
from supervisor.config.yamlfile import Path, YamlSyntaxError, parse
from supervisor.heap import collector_paused

# 10,000 workers of one instance each, with a dozen settings, are 4 MB; what is far larger
# is a mistake (or an attack). The parsed tree is bounded apart (yamlfile.MAX_NODES).
MAX_FILE_BYTES = 16 << 20


def _keys_at(path: Path) -> Sequence[str]:
    model: Any = Config
    if path[:1] == ("supervisor",):
        model = SupervisorConfig
    elif path[:1] == ("workers",) and len(path) >= 2:
        model = {"backoff": BackoffConfig, "stdout": LogConfig,
                 "stderr": LogConfig}.get(str(path[2]), WorkerConfig) if len(path) > 2 else (
            WorkerConfig)
    return list(model.model_fields)


def load_config(path: str) -> Config:
    """Read, parse and check a config file. Raises ConfigError (never anything else for a bad
    file; the messages use ``path`` as given)."""
    try:
        with collector_paused():
            return _load(path)
    except ConfigError:
        raise
    except MemoryError:
        raise ConfigError([f"{path}: the config needs more memory than there is"]) from None
    except Exception as e:      # the last line of defence: a bug below must not be a traceback
        raise ConfigError([f"{path}: cannot load the config: {type(e).__name__}: "
                           f"{str(e)[:200]}"]) from None


def _load(path: str) -> Config:
    raw = _read(path)
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([f"{path}: the file is larger than {MAX_FILE_BYTES >> 20} MiB; a "
                           "config is never that large"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                           f"{e.start})")]) from None
    try:
        doc = parse(text)
    except YamlSyntaxError as e:
        where = f"{path}:{e.line}:{e.column}" if e.line is not None else path
        raise ConfigError([f"{where}: invalid YAML: {e.message}"]) from None
    found: list[tuple[int | None, str]] = [
        (line or doc.line_of(p), line_text(path, line or doc.line_of(p), p, msg))
        for p, msg, line in doc.problems]
    if doc.refused:        # refused values are None: validating the rest would only add noise
        found.sort(key=lambda item: item[0] or 0)
        raise ConfigError([text for _, text in found])
    if doc.data is None:
        raise ConfigError([(f"{path}: the file is empty; a config needs at least a 'workers:' "
                           "mapping")])
    if not isinstance(doc.data, dict):
        raise ConfigError([(f"{path}:1: the top level must be a mapping with a 'workers:' key "
                           f"(got {got(doc.data)})")])
    data = {k: v for k, v in doc.data.items() if not k.startswith("x-")}
    abs_path = os.path.abspath(path)
    context = {"config_path": abs_path, "base_dir": os.path.dirname(abs_path)}
    config: Config | None = None
    try:
        config = Config.model_validate(data, context=context)
    except ValidationError as e:
        problems = from_validation_error(e, data, _keys_at)
    else:
        problems = cross_checks(config)
    found += [(doc.line_of(p), line_text(path, doc.line_of(p), p, m)) for p, m in problems]
    if found or config is None:
        found.sort(key=lambda item: item[0] or 0)
        raise ConfigError([text for _, text in found])
    return config


def _read(path: str) -> bytes:
    """The file's first MAX_FILE_BYTES + 1 bytes. Opened O_NONBLOCK and checked on the fd: a
    FIFO put where the config was would block the open and the read for ever (the daemon's
    reload runs on its loop), and a device has no end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the config file: {e.strerror}"]) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError([f"{path}: cannot read the config file: Is a directory"])
        if not stat.S_ISREG(mode):
            raise ConfigError([f"{path}: is a FIFO, socket or device, not a regular file; a "
                               "config is a file"])
        with open(fd, "rb", closefd=False) as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the config file: {e.strerror}"]) from None
    finally:
        os.close(fd)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the YAML file (what editors check against)."""
    schema = _one_line(Config.model_json_schema(mode="validation"))
    schema["patternProperties"] = {"^x-": {"description": "Ignored: a place for YAML anchors."}}
    schema["title"] = "pyvisor config"
    schema["description"] = ("Workers for supervisord to run. Generated by `python -m "
                             "supervisor.config --schema`; do not edit.")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _one_line(node: Any) -> Any:
    """Descriptions come from docstrings: join their wrapped lines."""
    if isinstance(node, dict):
        return {k: " ".join(v.split()) if k == "description" and isinstance(v, str)
                else _one_line(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_one_line(v) for v in node]
    return node
