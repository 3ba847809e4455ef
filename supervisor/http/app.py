"""Open the HTTP endpoint for a daemon: the token, the routes, the metrics registry, the
server. The daemon imports this module only when ``supervisor.http`` is set."""

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

__all__ = ["HttpError", "HttpServer", "start_http"]


def start_http(daemon: Daemon, handlers: Handlers, sup: SupervisorConfig,
               log: Callable[[str], None], log_where: str) -> HttpServer:
    """Listen on sup.http. Raises HttpError (the address, the token file) with the reason."""
    assert sup.http is not None
    token = None
    if sup.http_token_file is not None:
        try:
            token = read_token(sup.http_token_file)
        except TokenError as e:
            raise HttpError(f"supervisor.http_token_file: {e}") from None
    routes = Routes(daemon, handlers, token, lambda: collector.render(), sup.http_ready)
    server = HttpServer(daemon.runtime.loop, parse_address(sup.http), routes.router(),
                        unix_mode=sup.socket_mode,
                        unix_gid=resolve_group(sup.socket_group) if sup.socket_group else None,
                        log=log, log_where=log_where)
    collector = DaemonCollector(daemon.runtime, server, sup.http_metrics_instances)
    return server
