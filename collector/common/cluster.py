"""A Redis Cluster client that behaves like one node's client at our error boundary.

redis-py's :class:`~redis.cluster.RedisCluster` connects when it is made
(it asks a seed for the slot map) and raises
:class:`~redis.exceptions.RedisClusterException`, which is *not* a
``RedisError``, when no seed answers or a slot has no node (during a
failover). Both services catch ``RedisError`` and back off; so
:class:`LazyCluster` makes the cluster client on first use, not at
construction (a daemon starts while the cluster is down, like with one
node), and raises those exceptions as :class:`ClusterUnavailable`, a
``redis.ConnectionError``.

MOVED and ASK redirections are followed by redis-py itself; a connection
error makes it re-read the slot map before it raises, so the caller's next
attempt goes to the promoted replica.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import RedisClusterException


class ClusterUnavailable(redis.ConnectionError):
    """No seed of the cluster answered, or a slot has no node (a failover under way)."""


class LazyCluster:
    """A :class:`RedisCluster` made by ``factory`` on first use; its errors as ``RedisError``."""

    def __init__(self, factory: Callable[[], RedisCluster]) -> None:
        self._factory = factory
        self._real: RedisCluster | None = None
        self._lock = threading.Lock()

    def real(self) -> RedisCluster:
        """The cluster client (made now if it was not yet; ClusterUnavailable if it cannot be)."""
        real = self._real
        if real is None:
            with self._lock:
                if self._real is None:
                    try:
                        self._real = self._factory()
                    except RedisClusterException as exc:
                        raise ClusterUnavailable(str(exc)) from exc
                real = self._real
        return real

    def register_script(self, script: str | bytes) -> Script:
        return Script(self, script)  # its calls come back through this proxy

    def close(self) -> None:
        if self._real is not None:
            self._real.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real(), name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except RedisClusterException as exc:
                raise ClusterUnavailable(str(exc)) from exc

        return call
