"""The stream's byte budget per shard as the pump spools against it.

The daemons publish theirs next to the stream (:mod:`collector.common.budget`).
``max_backlog_bytes`` in the pump's config, when set, wins (``source``
``config``); otherwise the smallest live daemon's share (``daemon``), read at
start and every :data:`REFRESH_S`; with none published yet (no daemon has
started, an older daemon, an ACL user that may not read or write the key),
the daemon's default, 256 MiB over the shards (``default``), until one is.

The supervisor's :class:`Budget` (``report=True``) logs what it follows once,
each change, a daemon budget missing, and a configured value that differs from
the daemon's (once per pair of values), and feeds ``/metrics``; each worker's
spooler reads its own, silently.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from collector.common.budget import read_budgets
from collector.common.log import get_logger

from .config import PumpConfig

log = get_logger(__name__)

REFRESH_S = 5.0
#: The daemon's default max_backlog_bytes (collector/config.py).
DEFAULT_BYTES = 256 << 20


class Budget:
    """What a shard may hold, per this pump (module docstring)."""

    def __init__(self, config: PumpConfig, r: Any, *, report: bool = False) -> None:
        self.r = r
        self.stream_key = config.stream_key
        self.shards = config.stream_shards
        self.configured = (None if config.max_backlog_bytes is None
                           else config.max_backlog_bytes // self.shards)
        self.report = report
        self.daemon: int | None = None  # the smallest live daemon's share per shard
        self.daemons: dict[str, int] = {}
        self.next_at = 0.0
        self.read_once = False
        self.refused = False
        self.said: set[tuple[Any, ...]] = set()

    # -- the values --------------------------------------------------------------
    def per_shard(self) -> int:
        """Bytes one shard may hold: the configured value, the daemon's, or the default."""
        if self.configured is not None:
            return self.configured
        if self.daemon is not None:
            return self.daemon
        return DEFAULT_BYTES // self.shards

    def source(self) -> str:
        if self.configured is not None:
            return "config"
        return "daemon" if self.daemon is not None else "default"

    def mismatch(self) -> bool:
        """A configured value that is not the daemon's (the configured one wins)."""
        return (self.configured is not None and self.daemon is not None
                and self.configured != self.daemon)

    # -- reading -----------------------------------------------------------------
    def refresh(self, now: float) -> None:
        """Read the daemons' budgets if :data:`REFRESH_S` passed; keep the last on error."""
        if now < self.next_at:
            return
        self.next_at = now + REFRESH_S
        try:
            daemons = read_budgets(self.r, self.stream_key)
        except redis.ResponseError as exc:
            if self.report and not self.refused:
                self.refused = True
                log.warning("Redis refuses to show the daemon's backlog budget; set the "
                            "pump's max_backlog_bytes to the daemon's by hand.",
                            key=f"{self.stream_key}:budget", error=str(exc))
            return
        except (redis.RedisError, OSError):
            return  # Redis is away: the workers and trimming say so
        before = self.daemon
        self.daemons = daemons
        self.daemon = min(daemons.values()) if daemons else None
        first, self.read_once = not self.read_once, True
        if self.report and (first or self.daemon != before):
            self._say()

    def _say(self) -> None:
        if self.configured is not None:
            if self.daemon is None:
                self._once(("config",), logging.INFO, "Spooling against max_backlog_bytes "
                           "from the pump's config.", per_shard=self.configured)
            elif self.mismatch():
                self._once(("mismatch", self.configured, self.daemon), logging.WARNING,
                           "max_backlog_bytes in the pump's config differs from the "
                           "daemon's; the pump's is used.", pump_per_shard=self.configured,
                           daemon_per_shard=self.daemon, daemons=len(self.daemons),
                           fix="remove max_backlog_bytes from the pump's config to follow "
                               "the daemon")
            return
        if self.daemon is None:
            self._once(("default",), logging.WARNING, "No daemon has published its backlog "
                       "budget yet; spooling against the default until one does.",
                       per_shard=self.per_shard(), key=f"{self.stream_key}:budget")
        else:
            log.info("Following the daemon's backlog budget.", per_shard=self.daemon,
                     daemons=len(self.daemons))

    def _once(self, what: tuple[Any, ...], level: int, msg: str, **kw: Any) -> None:
        if what not in self.said:
            self.said.add(what)
            log.log(level, msg, **kw)
