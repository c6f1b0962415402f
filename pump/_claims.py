"""Keeping the entries a worker has in hand claimed by its consumer while it works on them.

Another consumer of the group claims an entry once it has been pending
``claim_idle_ms`` without its consumer reading or claiming it (a dead
worker's: ``pump/_reading.py``). One write of a batch, all its attempts,
ends within ``batch_deadline_s`` of its start, and the config has
``claim_idle_ms`` above that; but a worker may hold entries through many
writes before it acknowledges them: isolating the records at fault writes
ever smaller parts of a batch (``pump/_isolate.py``), an outage is retried
until the sink is back, and the entries of a read's later shards wait while
the earlier shards are delivered. So the reader says which entries are in
hand (those of its last read, shard by shard until each is handed back),
and before every write (:meth:`pump._delivery.Delivery.write`) the worker
claims again (idle time reset, no delivery counted; only those still its own,
``pump/_ownclaim.py``: never one the spooler or another worker took) those of a
shard read or claimed more than
``(claim_idle_ms - batch_deadline_s) / 2`` ago: the write, and the
acknowledgement after it, end before anybody may claim them. A write soon
after its read costs nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis

from collector.common.log import RateLimited

from ._ownclaim import claim_own


class Claims:
    """The entries in hand, per shard: their ids and when they were last read or
    claimed; :meth:`keep` claims again those that could outlast ``claim_idle_ms``."""

    def __init__(self, r: redis.Redis, group: str, consumer: str, *, claim_idle_s: float,
                 deadline_s: float, limited: RateLimited, sink_name: str) -> None:
        self.r = r
        self.group = group
        self.consumer = consumer
        self.limited = limited
        self.sink_name = sink_name
        #: a shard's entries are claimed again when older than this (seconds)
        self.refresh_after_s = max(0.0, (claim_idle_s - deadline_s) / 2)
        self.held: dict[str, tuple[list[Any], float]] = {}  # key -> (ids, read/claimed at)
        self.refreshes = 0  # XCLAIM calls made

    def hold(self, key: str, ids: Sequence[Any], at: float) -> None:
        """``ids`` of ``key`` are in hand, read at ``at`` (monotonic, before the read)."""
        self.held[key] = (list(ids), at)

    def release(self, key: str) -> None:
        """``key``'s entries are handed back (acknowledged, or left pending to re-read)."""
        self.held.pop(key, None)

    def clear(self) -> None:
        self.held.clear()

    def keep(self) -> None:
        """Claim again each shard's entries read or claimed too long ago (module doc)."""
        if not self.held:
            return
        now = time.monotonic()
        for key, (ids, at) in list(self.held.items()):
            if now - at < self.refresh_after_s:
                continue
            try:  # an entry no longer this consumer's is left to whoever has it
                claim_own(self.r, key, self.group, self.consumer, ids)
            except redis.RedisError as exc:  # the write goes on; the next one tries again
                self.limited.warning("claim", "Claiming the entries in hand again failed.",
                                     sink=self.sink_name, error=exc)
                continue
            self.refreshes += 1
            self.held[key] = (ids, now)
