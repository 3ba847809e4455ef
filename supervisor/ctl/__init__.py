"""supervisorctl: the command-line client of supervisord, one module per verb.

Its start-up time is its latency, so this package imports click, the standard library,
supervisor.paths, supervisor.control.protocol and its own modules only -- never pydantic, yaml,
psutil, loguru or posix_ipc -- and the entry point (main) runs status and pid without click
(tests/unit/test_ctl_imports.py checks). The daemon renders what to
print; the client prints it.
"""
