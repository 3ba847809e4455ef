"""Open the HTTP endpoint for a daemon: the token, the routes, the metrics, the server. The
daemon imports this module only when ``supervisor.http`` is set."""

from __future__ import annotations

from collections.abc import Callable

from supervisor.config import SupervisorConfig
from supervisor.control.handlers import Daemon, Handlers
from supervisor.control.sockfile import resolve_group
from supervisor.http.address import parse_address
from supervisor.http.metrics import DaemonCollector
from supervisor.http.routes import Routes
from supervisor.http.server import HttpError, HttpServer
from supervisor.http.token import TokenError, read_token

__all__ = ["HttpEndpoint", "HttpError"]


def _token(sup: SupervisorConfig) -> bytes | None:
    if sup.http_token_file is None:
        return None
    try:
        return read_token(sup.http_token_file)
    except TokenError as e:
        raise HttpError(f"supervisor.http_token_file: {e}") from None


class HttpEndpoint:
    """The server with its routes and metrics. Raises HttpError (the address, the token file)
    with the reason."""

    def __init__(self, daemon: Daemon, handlers: Handlers, sup: SupervisorConfig,
                 log: Callable[[str], None], log_where: str) -> None:
        assert sup.http is not None
        self.sup = sup
        self.routes = Routes(daemon, handlers, _token(sup), lambda: self.collector.render(),
                             sup.http_ready)
        self.server = HttpServer(
            daemon.runtime.loop, parse_address(sup.http), self.routes.router(),
            unix_mode=sup.socket_mode,
            unix_gid=resolve_group(sup.socket_group) if sup.socket_group else None,
            log=log, log_where=log_where)
        self.collector = DaemonCollector(daemon.runtime, self.server, sup.http_metrics_instances)
        self.address = self.server.address
        self.bound = self.server.bound

    def reload(self, sup: SupervisorConfig) -> str:
        """Take the token file, http_ready and http_metrics_instances from a reloaded config
        (a rotated token works at once); the address stays until the next start. Returns what
        to log ("" when nothing)."""
        try:
            token = _token(sup)
        except HttpError as e:
            return f"{e}; keeping the previous token"
        changed = token != self.routes.token
        self.routes.token = token
        self.routes.ready_workers = sup.http_ready
        self.collector.max_instances = sup.http_metrics_instances
        moved = sup.http != self.sup.http
        self.sup = sup
        notes = (["http: token reloaded"] if changed else []) + (
            [f"http: still on {self.bound}; the new address takes effect at the next start"]
            if moved else [])
        return "; ".join(notes)

    def close(self) -> None:
        self.server.close()
