"""supervisorctl: the command-line client of supervisord, one module per verb.

Its start-up time is its latency, so this package imports click, the standard library,
supervisor.paths, supervisor.control.protocol and its own modules only -- never pydantic, yaml,
psutil, loguru or posix_ipc -- and the entry point (main) runs status, pid and tail without
click, importing besides its own modules only supervisor.paths, supervisor.safefs,
supervisor.jsonlite, supervisor.control.wire and the C modules _socket and _json: no typing,
re, json, enum, socket, contextlib or collections (annotations' names only under
TYPE_CHECKING). tests/unit/test_ctl_imports.py checks both. The daemon renders what to print;
the client prints it.
"""
