"""Reading a sink group's entries: new ones, this consumer's own pending ones, and
the entries of consumers that went silent (claimed after ``claim_idle_ms``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import redis

from collector.common.log import get_logger

from ._claims import Claims
from ._stop import Stopper
from .config import PumpConfig

log = get_logger(__name__)

#: ``handle(shard key, [(entry id, fields)], {entry id: deliveries} or None)``
Handler = Callable[[str, list[tuple[Any, Any]], "dict[str, int] | None"], None]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class EntryReader:
    """One consumer's reads of its group, handing every entry to ``handle``.

    New entries come with ``deliveries=None`` (first delivery); re-read pending
    ones one at a time with their delivery count from the PEL (kept by Redis,
    so it survives restarts). ``claims`` is told which entries are in hand until
    ``handle`` returns (``pump/_claims.py``).
    """

    def __init__(self, r: redis.Redis, config: PumpConfig, group: str, consumer: str,
                 stopper: Stopper, handle: Handler, claims: Claims | None = None) -> None:
        self.r = r
        self.config = config
        self.keys = config.shard_keys()
        self.group = group
        self.consumer = consumer
        self.stopper = stopper
        self.handle = handle
        self.claims = claims
        self.block_ms = max(1, int(config.read_block_s * 1000))
        self.pending_due = 0.0  # look at our own pending entries first (restart)
        self.claim_due = 0.0
        self.claim_every = min(config.claim_idle_ms / 2000, 30.0)
        # a cluster takes one stream per XREADGROUP (shards are in different slots)
        self.per_shard = config.cluster() and len(self.keys) > 1
        self.next_shard = 0

    def pending_now(self) -> None:
        """Look at this consumer's pending entries on the next turn (an ack may be lost)."""
        self.pending_due = 0.0

    def pending_at(self, when: float) -> None:
        """Re-read the pending entries no later than ``when`` (monotonic seconds)."""
        self.pending_due = min(self.pending_due, when)

    def step(self) -> int:
        """Read and hand on one round; returns the number of entries handled."""
        now = time.monotonic()
        handled = 0
        if now >= self.claim_due:
            self.claim_due = now + self.claim_every
            if self._autoclaim():
                self.pending_due = 0.0
        if now >= self.pending_due:
            self.pending_due = math.inf
            handled += self._own_pending()
        if self.stopper.is_set():
            return handled
        read_at = time.monotonic()
        if self.per_shard:
            resp = self._read_shards()
        else:
            resp = self.r.xreadgroup(self.group, self.consumer, {k: ">" for k in self.keys},
                                     count=self.config.read_count, block=self.block_ms)
        got = [(_s(key), entries) for key, entries in resp or () if entries]
        claims = self.claims
        if claims is not None:  # every shard's entries are in hand until delivered
            for key, entries in got:
                claims.hold(key, [eid for eid, _ in entries], read_at)
        for key, entries in got:
            handled += len(entries)
            try:
                self.handle(key, entries, None)
            finally:
                if claims is not None:
                    claims.release(key)
        return handled

    def _read_shards(self) -> list[Any]:
        """New entries shard by shard (a cluster: one key per command, no CROSSSLOT).

        Every shard without blocking, starting after the last one that had
        entries; when all are empty, one blocking read of the next shard in
        turn for ``read_block_s / shards``, so a new entry waits about
        ``read_block_s`` at most, as with one multi-key read.
        """
        keys, n = self.keys, len(self.keys)
        for i in range(n):
            key = keys[(self.next_shard + i) % n]
            resp = self.r.xreadgroup(self.group, self.consumer, {key: ">"},
                                     count=self.config.read_count)
            if resp and resp[0][1]:
                self.next_shard = (self.next_shard + i + 1) % n
                return list(resp)
        key = keys[self.next_shard]
        self.next_shard = (self.next_shard + 1) % n
        return list(self.r.xreadgroup(self.group, self.consumer, {key: ">"},
                                      count=self.config.read_count,
                                      block=max(1, self.block_ms // n)) or ())

    def _autoclaim(self) -> bool:
        """Claim entries other consumers left idle longer than claim_idle_ms.

        XPENDING IDLE finds them and XCLAIM JUSTID takes them (atomically
        re-checking the idle time) without counting a delivery; the pending
        pass then reads them, which counts one.
        """
        claimed = 0
        idle = self.config.claim_idle_ms
        for key in self.keys:
            for _ in range(20):
                rows = self.r.xpending_range(key, self.group, min="-", max="+",
                                             count=self.config.read_count, idle=idle)
                ids = [row["message_id"] for row in rows
                       if _s(row["consumer"]) != self.consumer]
                if not ids:
                    break
                got = self.r.xclaim(key, self.group, self.consumer, idle, ids, justid=True)
                claimed += len(got)
                if len(rows) < self.config.read_count or not got:
                    break
        if claimed:
            log.info("Claimed entries left pending by another consumer.",
                     sink=self.group, consumer=self.consumer, entries=claimed)
        return claimed > 0

    def _own_pending(self) -> int:
        """Re-read this consumer's pending entries one at a time (counts a delivery)."""
        n = 0
        for key in self.keys:
            last: Any = "0-0"
            while not self.stopper.is_set():
                read_at = time.monotonic()
                resp = self.r.xreadgroup(self.group, self.consumer, {key: last}, count=1)
                entries = resp[0][1] if resp else []
                if not entries:
                    break
                eid, fields = entries[0]
                last = eid
                n += 1
                if not fields:  # trimmed or deleted while pending: nothing to deliver
                    self.r.xack(key, self.group, eid)
                    continue
                info = self.r.xpending_range(key, self.group, min=eid, max=eid, count=1,
                                             consumername=self.consumer)
                deliveries = int(info[0]["times_delivered"]) if info else 1
                if self.claims is not None:
                    self.claims.hold(key, [eid], read_at)
                try:
                    self.handle(key, [(eid, fields)], {_s(eid): deliveries})
                finally:
                    if self.claims is not None:
                        self.claims.release(key)
        return n
