"""The config file: pydantic models, loading, and the JSON Schema editors use.

``load_config(path)`` returns a ``Config`` or raises ``ConfigError`` whose lines each name the
file, line, path and problem. Everything is checked at load time -- unknown keys, types, signal
names, users, dependency cycles, colliding log files -- so a reload can refuse a bad file before
touching anything. The YAML-shaped input is described by ``json_schema()`` (``python -m
supervisor.config --schema``, committed as configs/pyvisor.schema.json).

Top-level keys starting with ``x-`` are ignored: a place for YAML anchors (``x-defaults:
&defaults``) to merge into workers with ``<<: *defaults``.

The modules, each depending only on the ones before it:

- yamlfile.py: YAML to plain data, with the line of every key, duplicate keys and merge keys
- errors.py: the wording of every problem (``path: message (got ...)``) and ConfigError
- values.py: parsers for the scalar values YAML cannot type (signals, sizes, modes, names)
- models.py: the frozen pydantic models and their one-value-at-a-time validators
- checks.py: checks across a whole validated config (socket, depends_on, shared log files)
- load.py: load_config (read, parse, validate, check, report) and json_schema
- __main__.py: ``python -m supervisor.config``
"""

from supervisor.config.errors import ConfigError
from supervisor.config.load import json_schema, load_config
from supervisor.config.models import (
    BackoffConfig,
    Config,
    LogConfig,
    SupervisorConfig,
    WorkerConfig,
)

__all__ = ["BackoffConfig", "Config", "ConfigError", "LogConfig", "SupervisorConfig",
           "WorkerConfig", "json_schema", "load_config"]
