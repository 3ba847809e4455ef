"""The daemon's HTTP endpoint (``supervisor: {http: ...}``): Prometheus metrics, probes and a
JSON API over the control verbs, served on the daemon's own loop.

This package's __init__ and ``address`` import only the standard library: the config imports
``address`` to check ``http:``, and a daemon without ``http`` never loads h11 or
prometheus_client (``server`` and ``metrics`` import them; the daemon imports those only when
``http`` is set).
"""
