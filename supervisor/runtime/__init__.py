"""The runtime: carries out the core's actions with real processes, pidfds and timers.

``Runtime`` (runtime.py) is the one interface the rest of the daemon uses; beside it, one
module per job: instance.py (what is kept per instance), spawning.py, exits.py (pidfds,
reaping, exit status), readiness.py (ready reports and heartbeats).
"""

from supervisor.runtime.instance import Instance, worker_data
from supervisor.runtime.runtime import Runtime
from supervisor.runtime.spawning import config_hash

__all__ = ["Instance", "Runtime", "config_hash", "worker_data"]
