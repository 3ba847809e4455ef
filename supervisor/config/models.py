"""The config file's pydantic models: what each key means, its default, and the checks of one
value at a time (the value parsers are in values.py, their wording in errors.py).

Models are frozen; ``WorkerConfig`` compares by value, so reload detects a changed worker with
``old != new``. All paths in a validated config are absolute (relative ones are taken from the
config file's directory, the context's ``base_dir``), and log paths have ``{log_dir}`` filled
in, so a changed log_dir shows as changed workers too. The field docstrings are the
descriptions in the JSON Schema (load.json_schema).

Validation only reads its context (``config_path``, ``base_dir``; load_config passes them), it
never writes to it. What needs two sections at once is done on the whole model: ``Config``'s
after-validator turns every worker's log path templates into file paths under
supervisor.log_dir. A ``WorkerConfig`` validated on its own keeps its templates.
"""

from __future__ import annotations

import heapq
import os
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from supervisor import paths
from supervisor.config import values as cv
from supervisor.config.errors import got, problem, suggest
from supervisor.core.types import Policy, RestartPolicy
from supervisor.http.address import AddressError, parse_address
from supervisor.names import instance_name

# Every number has a bound the daemon can carry out (deadlines in u64 nanoseconds, backoff
# in floats, one shm block and process per instance):
# - a timeout or delay is at most a day: longer is never meant, and a day in nanoseconds is far
#   inside u64;
# - numprocs at most 10,000 per worker, 100,000 instances per config (checks.py): ten times
#   the 10,000 instances pyvisor is built to run, still under the kernel's default pid_max;
# - start_retries at most 1,000,000; backups 1,000; max_bytes 1 TiB; priority within
#   +-1,000,000 (it only orders workers).
MAX_SECONDS = 86400.0
MAX_FACTOR = 100.0
MAX_NUMPROCS = 10_000
MAX_INSTANCES = 100_000
MAX_RETRIES = 1_000_000
MAX_BACKUPS = 1000
MAX_PRIORITY = 1_000_000
_SCALAR = {"type": ["string", "number", "boolean", "null"]}
_NULLABLE: dict[str, Any] = {"type": ["string", "null"]}
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
Timeout = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
Signum = Annotated[int, BeforeValidator(cv.signal_number), WithJsonSchema({"anyOf": [
    {"type": "string", "enum": [n for s in cv.SIGNAL_NAMES for n in (s, "SIG" + s)]},
    {"type": "integer", "minimum": 1, "maximum": cv.SIGNAL_MAX}]})]
Size = Annotated[int, BeforeValidator(cv.byte_size), WithJsonSchema({"anyOf": [
    {"type": "integer", "minimum": 0, "maximum": cv.MAX_BYTES},
    {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([kKmMgGtT][iI]?)?[bB]?\s*$"}]})]
WorkerName = Annotated[str, AfterValidator(cv.worker_name)]
EnvName = Annotated[str, AfterValidator(cv.env_name)]
EnvValue = Annotated[str, BeforeValidator(cv.env_value), WithJsonSchema(_SCALAR)]


def _context(info: ValidationInfo) -> dict[str, Any]:
    return info.context if isinstance(info.context, dict) else {}


def _resolve(value: str, info: ValidationInfo) -> str:
    """A path from the file: ~ expanded, relative to the config file's directory."""
    base = _context(info).get("base_dir") or os.getcwd()
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)


class BackoffConfig(_Model):
    """Delay before restarting a worker that failed: initial, then times factor, up to max."""

    initial: Seconds = 0.1
    """Seconds before the first restart (at most 86400)."""
    factor: float = Field(default=2.0, ge=1, le=MAX_FACTOR)
    """Each further delay is the previous one times this (1 to 100)."""
    max: Seconds = 30.0
    """The delay never grows past this many seconds (at most 86400)."""

    @model_validator(mode="after")
    def _max_at_least_initial(self) -> BackoffConfig:
        if self.max < self.initial:
            raise problem(f"max ({self.max:g}) must be ≥ initial ({self.initial:g})")
        return self


class LogConfig(_Model):
    """Where a stream of a worker's output goes, and its size-based rotation."""

    path: Annotated[str, AfterValidator(cv.log_template)] | None = None
    """File path; may use {name} {index} {instance} {log_dir}. Relative paths are taken from
    the config file's directory. null: {log_dir}/{name}-{index}.out.log (.err.log for stderr)."""
    max_bytes: Size = 10 * 1024 * 1024
    """Rotate when the file reaches this size: bytes, or '10MB', '512KB', '1GiB' (1KB = 1024
    bytes), at most 1 TiB. 0: never rotate."""
    backups: int = Field(default=5, ge=0, le=MAX_BACKUPS)
    """How many rotated files (.1, .2, ...) to keep, at most 1000."""


def _output_kind(value: Any) -> str:
    return value if isinstance(value, str) else "file"


def _output_input(words: tuple[str, ...]) -> Any:
    """A stream's value: a mapping (a file), null (discarded: the file /dev/null) or one of
    ``words`` ('daemon': to the daemon's own stdout; for stderr also 'stdout')."""
    def parse(value: Any) -> Any:
        if value is None:
            return {"path": cv.DISCARD}
        if value in words or isinstance(value, dict | LogConfig):
            return value
        shown = " or ".join(repr(w) for w in words)
        near = suggest(value, words) if isinstance(value, str) else None
        hint = f"; did you mean {near!r}?" if near else ""
        raise problem(f"must be a mapping (path, max_bytes, backups), {shown}, or null to "
                      f"discard it (got {got(value)}){hint}")
    return parse


_TO_DAEMON = Annotated[Literal["daemon"], Tag("daemon")]
Stdout = Annotated[Annotated[LogConfig, Tag("file")] | _TO_DAEMON,
                   Discriminator(_output_kind), BeforeValidator(_output_input(("daemon",)))]
Stderr = Annotated[
    Annotated[LogConfig, Tag("file")] | Annotated[Literal["stdout"], Tag("stdout")] | _TO_DAEMON,
    Discriminator(_output_kind), BeforeValidator(_output_input(("stdout", "daemon")))]


class SupervisorConfig(_Model):
    """Settings of the daemon itself. All optional."""

    socket: str = Field(default=None, validate_default=True,
                      json_schema_extra=_NULLABLE)
    """Control socket path. null: a path under /run/pyvisor (root) or $XDG_RUNTIME_DIR/pyvisor
    derived from the config file's path."""
    socket_group: Annotated[str, BeforeValidator(cv.group_name)] | None = None
    """Group allowed to use the control socket (with socket_mode '0660')."""
    socket_mode: Annotated[int, BeforeValidator(cv.socket_mode), WithJsonSchema({"anyOf": [
        {"type": "string", "enum": ["0600", "0660", "600", "660"]},
        {"type": "integer", "enum": [0o600, 0o660]}]})] = Field(default=None, validate_default=True)
    """'0600' (owner only) or '0660' (and socket_group). Default: '0660' when socket_group is
    set, else '0600'."""
    log_dir: str = Field(default="logs", validate_default=True)
    """Directory for worker output logs, relative to the config file's directory."""
    block_prefix: str = Field(default=None, validate_default=True,
                            json_schema_extra=_NULLABLE)
    """Prefix of the workers' shared-memory control block names. null: derived from the config
    file's path, so two configs never collide."""
    log_level: Annotated[str, BeforeValidator(cv.log_level), WithJsonSchema(
        {"type": "string", "enum": list(cv.LOG_LEVELS)})] = "INFO"
    """Level of the daemon's own log."""
    cgroups: bool = True
    """One cgroup (v2) per instance, so that a worker is its whole process tree, when the
    daemon can have them (root, or a delegated systemd unit); false: process groups only."""
    shutdown_timeout: Timeout | None = None
    """Most seconds a whole shutdown may take (at most 86400): when they are over, whatever is
    still stopping, and every worker stopped later, gets SIGKILL. null: no bound of its own
    (each worker's stop is bounded by its graceful_timeout and kill_timeout)."""

    http: str | None = None
    """HTTP endpoint for Prometheus metrics (/metrics), probes (/livez, /readyz) and a JSON API
    (/api/v1/): 'HOST:PORT' with an IP address or localhost ('127.0.0.1:9001', '[::1]:9001'),
    or an absolute Unix socket path. null: none (the default)."""
    http_allow_remote: bool = False
    """Allow http on an address other machines can reach (not loopback): anyone who reaches
    it reads metrics and status. Control still needs the token."""
    http_token_file: str | None = None
    """File holding the bearer token that control requests over HTTP need (Authorization:
    Bearer TOKEN); owned by root or the daemon's user, not writable by group or others, not
    readable by others, at most 4 KiB. null: the HTTP API is read-only."""
    http_ready: tuple[WorkerName, ...] | None = Field(default=None, strict=False)
    """Workers that /readyz waits for (all their instances RUNNING). null: every autostart
    worker."""
    http_metrics_instances: int = Field(default=100, ge=0, le=MAX_INSTANCES)
    """Per-instance series in /metrics for at most this many instances (by name); per-worker
    aggregates are always there. 0: aggregates only."""

    @field_validator("http", mode="before")
    @classmethod
    def _http(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return str(parse_address(value))
        except AddressError as e:
            raise problem(f"{e} (got {got(value)})") from None

    @field_validator("http_token_file", mode="after")
    @classmethod
    def _token_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve(cv.no_nul(value), info)

    @model_validator(mode="after")
    def _http_remote(self) -> SupervisorConfig:
        if self.http is not None and not self.http_allow_remote and not parse_address(
                self.http).loopback:
            raise problem(f"http: {self.http!r} is reachable from other machines, and anyone "
                          "who reaches it reads metrics and status; use a loopback address "
                          "('127.0.0.1:PORT') or a Unix socket path, or set http_allow_remote: "
                          "true to mean it")
        return self

    @field_validator("socket", mode="before")
    @classmethod
    def _socket(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return paths.default_socket_path(_context(info).get("config_path") or "pyvisor.yaml")
        if value == "":
            raise problem("must not be empty (null means the default path)")
        if isinstance(value, str):
            path = _resolve(cv.no_nul(value), info)
            if len(os.fsencode(path)) > 107:
                raise problem(f"socket path is {len(os.fsencode(path))} bytes long, the limit is "
                              f"107 (got {got(value)})")
            return path
        return value

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _socket_mode(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return 0o660 if info.data.get("socket_group") else 0o600
        return value

    @field_validator("log_dir", mode="after")
    @classmethod
    def _log_dir(cls, value: str, info: ValidationInfo) -> str:
        return _resolve(cv.no_nul(value), info)

    @field_validator("block_prefix", mode="before")
    @classmethod
    def _block_prefix(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return paths.default_block_prefix(_context(info).get("config_path") or "pyvisor.yaml")
        return cv.block_prefix(value) if isinstance(value, str) else value


class WorkerConfig(_Model):
    """One named program, run as numprocs instances name:0, name:1, ..."""

    command: Annotated[tuple[str, ...], BeforeValidator(cv.command), WithJsonSchema({"anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": _SCALAR, "minItems": 1}]})]
    """The program and its arguments: a list, or a string split like a shell would (no shell
    is run)."""
    numprocs: int = Field(default=1, ge=1, le=MAX_NUMPROCS)
    """How many instances to run: 1 to 10,000 (and 100,000 in the whole config)."""
    directory: str = Field(default=None, validate_default=True,
                         json_schema_extra=_NULLABLE)
    """Working directory, relative to the config file's directory. null: that directory."""
    environment: dict[EnvName, EnvValue] = Field(default_factory=dict)
    """Extra environment variables; values are taken as the text written."""
    user: Annotated[str, BeforeValidator(cv.user_name), WithJsonSchema(
        {"type": ["string", "integer"]})] | None = None
    """Run as this user (name or uid): its uid, primary group and supplementary groups, and
    HOME, USER, LOGNAME, SHELL from its passwd entry; its log files are made its own (0600).
    null: the daemon's user."""
    group: Annotated[str, BeforeValidator(cv.group_name), WithJsonSchema(
        {"type": ["string", "integer"]})] | None = None
    """With user: this primary group (name or gid) instead of the user's own. null: the
    user's."""
    autostart: bool = True
    """Start with the daemon."""
    restart: Annotated[RestartPolicy, BeforeValidator(lambda v: _restart(v))] = (
        RestartPolicy.ON_FAILURE)
    """always | on-failure | never."""
    exit_codes: Annotated[frozenset[int], BeforeValidator(cv.exit_codes), WithJsonSchema(
        {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]})] = (
        frozenset({0}))
    """Exit codes that count as success (for restart: on-failure)."""
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    start_retries: int = Field(default=5, ge=0, le=MAX_RETRIES)
    """Failed starts in a row before the worker is FATAL (at most 1,000,000)."""
    start_seconds: Seconds = 1.0
    """A program that never reports ready counts as running after this many seconds (at most
    86400, like every timeout)."""
    graceful_timeout: Seconds = 10.0
    """Seconds a worker has to stop at a unit-of-work boundary before stop_signal (at most
    86400)."""
    stop_signal: Signum = 15
    """Signal sent to the process group when the graceful timeout passes: TERM, SIGTERM or 15."""
    kill_timeout: Seconds = 5.0
    """Seconds after stop_signal before SIGKILL (at most 86400)."""
    crash_burst: int = Field(default=5, ge=1, le=1000)
    """A worker that exits more than this many times within crash_interval seconds of
    running (a crash loop) backs off after the first exit and goes FATAL past the burst."""
    crash_interval: Timeout = 10.0
    """The window, in seconds, over which exits from RUNNING are counted (at most 86400)."""
    heartbeat_timeout: Timeout | None = None
    """Restart a worker whose heartbeat is older than this many seconds (at most 86400). null:
    not checked."""
    # The log paths are templates until the Config validator makes them files (_log_files).
    stdout: Stdout = Field(default_factory=dict, validate_default=True)
    """A log file (path, max_bytes, backups); null or path /dev/null: discarded; 'daemon':
    to the daemon's own stdout, one line per output line prefixed with the instance
    (containers)."""
    stderr: Stderr = Field(default_factory=dict, validate_default=True)
    """Like stdout ('daemon': the daemon's stderr), or 'stdout': wherever stdout goes."""
    umask: Annotated[int, BeforeValidator(cv.umask), WithJsonSchema(
        {"type": ["string", "integer"]})] | None = None
    """The worker's umask, octal like umask(1): '022', '077'. null: the daemon's."""
    stop_mode: Literal["graceful", "signal"] = "graceful"
    """What a plain stop or restart does: graceful (a worker using the library finishes its
    unit of work first, up to graceful_timeout; others get stop_signal at once) or signal
    (stop_signal at once). stop --graceful / --signal choose for one command."""
    priority: int = Field(default=999, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    """Lower starts first and stops last (-1,000,000 to 1,000,000)."""
    depends_on: tuple[Annotated[str, Field(strict=True)], ...] = Field(default=(), strict=False)
    """Workers that must be running (ready) before this one starts."""

    @field_validator("directory", mode="before")
    @classmethod
    def _directory(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return _context(info).get("base_dir") or os.getcwd()
        if not isinstance(value, str):
            return value
        path = _resolve(cv.no_nul(value), info)
        if not os.path.isdir(path):
            what = "is not a directory" if os.path.lexists(path) else "no such directory"
            raise problem(f"{what}: {path}")
        return path

    @model_validator(mode="after")
    def _group_needs_user(self) -> WorkerConfig:
        if self.group is not None and self.user is None:
            raise problem(f"group: {got(self.group)} replaces the primary group of user:, "
                          "which is not set; set user: too")
        return self

    def policy(self, name: str = "") -> Policy:
        """What the state machine needs, in seconds and signal numbers (``name``: the worker's
        name, for the state machine's messages)."""
        return Policy(
            name=name, restart=self.restart, success_codes=self.exit_codes,
            backoff_initial=self.backoff.initial, backoff_factor=self.backoff.factor,
            backoff_max=self.backoff.max, start_retries=self.start_retries,
            start_seconds=self.start_seconds, graceful_timeout=self.graceful_timeout,
            stop_signal=self.stop_signal, kill_timeout=self.kill_timeout,
            crash_burst=self.crash_burst, crash_interval=self.crash_interval)

    def instances(self, name: str) -> list[str]:
        return [instance_name(name, i) for i in range(self.numprocs)]

    def fields(self, name: str, index: int) -> dict[str, str]:
        """What {name} {index} {instance} stand for in instance name:index."""
        return {"name": name, "index": str(index), "instance": instance_name(name, index)}

    def argv(self, name: str, index: int) -> list[str]:
        """The command of instance name:index, placeholders filled in."""
        fields = self.fields(name, index)
        return [cv.expand(arg, fields) for arg in self.command]

    def env(self, name: str, index: int) -> dict[str, str]:
        """The environment: of instance name:index, placeholders in the values filled in."""
        fields = self.fields(name, index)
        return {k: cv.expand(v, fields) for k, v in self.environment.items()}

    def log_paths(self, name: str, index: int) -> tuple[str | None, str | None]:
        """(stdout, stderr) absolute file paths of instance name:index, for a worker of a
        validated Config. Equal strings mean one shared file (stderr: stdout); None: no file
        (discarded, or to the daemon: see to_daemon)."""
        fields = self.fields(name, index)
        out = _file_of(self.stdout, fields)
        if self.stderr == "stdout":
            return out, out
        return out, _file_of(self.stderr, fields)

    def to_daemon(self) -> tuple[bool, bool]:
        """Whether stdout, stderr go to the daemon's own stdout, stderr."""
        out = self.stdout == cv.TO_DAEMON
        return out, self.stderr == cv.TO_DAEMON or (self.stderr == "stdout" and out)

    def log_config(self, stream: Literal["stdout", "stderr"]) -> LogConfig:
        """Rotation settings of a stream (stderr: stdout gives stdout's)."""
        value = self.stdout if stream == "stdout" else self.stderr
        if value == "stdout":
            value = self.stdout
        return value if isinstance(value, LogConfig) else LogConfig()


def _file_of(value: LogConfig | str, fields: dict[str, str]) -> str | None:
    if not isinstance(value, LogConfig) or value.path == cv.DISCARD:
        return None
    assert isinstance(value.path, str), "log paths are resolved by Config validation"
    return value.path.format(**fields)


def _escape(path: str) -> str:
    return path.replace("{", "{{").replace("}", "}}")


def _log_file(log: LogConfig, stream: Literal["out", "err"], log_dir: str,
              base_dir: str) -> LogConfig:
    """``log`` with its path template made a file path: the default where none is set,
    {log_dir} filled in, a relative path taken from base_dir. What is left to format is
    {name} {index} {instance} (WorkerConfig.log_paths), so literal braces stay doubled."""
    template = log.path or "{log_dir}/{name}-{index}." + stream + ".log"
    path = os.path.join(_escape(base_dir), template.replace("{log_dir}", _escape(log_dir)))
    return log.model_copy(update={"path": os.path.normpath(path)})


def _with_log_files(worker: WorkerConfig, log_dir: str, base_dir: str,
                    shared: dict[_Model, _Model]) -> WorkerConfig:
    """worker with its log paths made file paths; its stdout, stderr and backoff the equal
    frozen objects of ``shared`` (10,000 workers share one of each: ~1 KB a worker)."""
    update: dict[str, _Model] = {"backoff": worker.backoff}
    if isinstance(worker.stdout, LogConfig):     # not 'daemon'
        update["stdout"] = _log_file(worker.stdout, "out", log_dir, base_dir)
    if isinstance(worker.stderr, LogConfig):     # stderr: stdout shares stdout's file
        update["stderr"] = _log_file(worker.stderr, "err", log_dir, base_dir)
    return worker.model_copy(update={k: shared.setdefault(v, v) for k, v in update.items()})


def _restart(value: Any) -> RestartPolicy:
    if isinstance(value, RestartPolicy):
        return value
    choices = [p.value for p in RestartPolicy]
    if isinstance(value, str) and value in choices:
        return RestartPolicy(value)
    near = suggest(value, choices) if isinstance(value, str) else None
    hint = f"; did you mean {near!r}?" if near else ""
    raise problem(f"must be one of {', '.join(choices)} (got {got(value)}){hint}")


class Config(_Model):
    """A whole config file. ``path`` is its absolute path (not a key in the file)."""

    supervisor: SupervisorConfig = Field(default_factory=dict, validate_default=True)
    workers: dict[WorkerName, WorkerConfig]
    """The programs to run, by name: 1-64 characters from A-Z a-z 0-9 _ . - ."""
    _path: str = PrivateAttr(default="")

    def model_post_init(self, context: Any) -> None:
        if isinstance(context, dict):
            self._path = context.get("config_path", "")

    @model_validator(mode="after")
    def _log_files(self, info: ValidationInfo) -> Config:
        """Every worker's log paths, from supervisor.log_dir. The workers dict (validation's
        own) is updated in place with copies: an after-validator must return self."""
        base_dir = _context(info).get("base_dir") or os.getcwd()
        shared: dict[_Model, _Model] = {}
        self.workers.update({name: _with_log_files(w, self.supervisor.log_dir, base_dir, shared)
                             for name, w in self.workers.items()})
        return self

    @property
    def path(self) -> str:
        return self._path

    @property
    def directory(self) -> str:
        return os.path.dirname(self._path)

    def start_order(self) -> list[str]:
        """Worker names: every worker after the ones it depends on; otherwise by priority,
        then name. Stop in the reverse order."""
        waiting = {name: {d for d in w.depends_on if d in self.workers}
                   for name, w in self.workers.items()}
        dependents: dict[str, list[str]] = {}
        for name, deps in waiting.items():
            for d in deps:
                dependents.setdefault(d, []).append(name)
        ready = [(w.priority, name) for name, w in self.workers.items() if not waiting[name]]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, name = heapq.heappop(ready)
            order.append(name)
            for other in dependents.get(name, ()):
                deps = waiting[other]
                deps.discard(name)
                if not deps:
                    heapq.heappush(ready, (self.workers[other].priority, other))
        if len(order) != len(self.workers):
            raise ValueError("depends_on has a cycle")   # load_config reports cycles first
        return order

    def instances(self) -> list[str]:
        """Every instance name, in start order."""
        return [i for name in self.start_order() for i in self.workers[name].instances(name)]
