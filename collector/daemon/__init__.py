"""collector-daemon: drains the rings of the app's processes into Redis.

``collector-daemon --config FILE`` (:mod:`collector.daemon.cli`) runs a
supervisor (:mod:`._supervisor`), which sorts the ring files it finds
(:mod:`._triage`) and hands each good ring to one process of a pool of
flushers (:mod:`._pool`, :mod:`._flusher`); they talk in the messages of
:mod:`._messages`. See those modules for the guarantees.
"""

from ._supervisor import DaemonError, Supervisor, run

__all__ = ["DaemonError", "Supervisor", "run"]
