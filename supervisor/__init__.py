"""pyvisor: the supervisor daemon (supervisord) and its CLI (supervisorctl)."""

__version__ = "0.1.0"
