"""The daemon's HTTP endpoint (``supervisor: {http: ...}``): Prometheus metrics, probes and a
JSON API over the control verbs, served on the daemon's own loop.

This package's __init__ and ``address`` import only the standard library: the config imports
``address`` and ``token`` to check ``http:``, and a daemon without ``http`` never loads h11
(``server`` imports it; the daemon imports ``app`` only when ``http`` is set).
"""
