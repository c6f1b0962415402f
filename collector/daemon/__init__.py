"""collector-daemon: drains the rings of the app's processes into Redis.

``collector-daemon --config FILE`` (:mod:`collector.daemon.cli`) runs a
supervisor (:mod:`._supervisor`) and a pool of flusher processes
(:mod:`._flusher`); see those modules for the guarantees.
"""

from ._supervisor import DaemonError, Supervisor, run

__all__ = ["DaemonError", "Supervisor", "run"]
