"""The control socket: protocol.py (what goes over it; stdlib only, supervisorctl imports it),
server.py (the daemon's Unix socket) and handlers.py (the daemon's answer to each verb).

This file stays empty: importing supervisor.control.protocol must not load the server or the
handlers (and with them psutil and the runtime) into supervisorctl.
"""
