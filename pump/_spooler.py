"""Moving a lagging sink's backlog from Redis into its spool, and feeding the sink from it.

A worker with a spool (``spool_max_bytes > 0``) runs a :class:`Spooler`
thread on its own Redis connection beside its delivery loop, so a sink that
hangs in a write does not stop it. Every ``SPOOL_TICK_S`` it measures, per
shard, what the sink's group holds back in Redis: its undelivered and
pending entries times Redis's bytes per entry (``MEMORY USAGE`` / ``XLEN``).
Over :attr:`Spooler.after` (half a shard's share of the stream's budget:
``max_backlog_bytes`` as :mod:`pump._budget` has it, the daemon's unless the
pump's config sets it) it starts moving, until that falls under half of it
again:

1. entries its own consumer (``<worker consumer>:spool``) left pending (a
   crash after the spool's fsync, before the ack) and the entries the
   worker's consumer holds (a write that hangs, a batch held through an
   outage), claimed; while the worker has had its batch in hand for less
   than ``CLAIM_AFTER_S`` the spooler waits (a batch a working sink is
   writing right now is left to it: claimed, it would reach the sink twice);
2. new entries (``XREADGROUP >``).

Each batch is appended to the spool and fsync-ed (:class:`pump._spool.Spool`)
and only then acknowledged for this group: a kill at any point leaves the
entries in Redis or in the spool (or in both: they are delivered twice,
with the same record ids). The stream can then be trimmed below them and
nobody else waits. While the spooler moves, or the spool holds anything,
the worker delivers from the spool, oldest first, and reads the stream
only when the spool is empty (:class:`SpoolFeeder`), so the sink gets
records in stream order. A full spool: ``overflow: block`` stops moving
(the entries stay in Redis: today's backpressure), ``drop_oldest`` drops
the oldest spooled entries and counts their records
(``spool_dropped_records``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from collector.common.counters import Slot
from collector.common.log import RateLimited, get_logger
from collector.common.stream import parse_entry_id

from ._budget import Budget
from ._metrics import STATE_OUTAGE, STATE_RUNNING
from ._redis import connect, group_info
from ._spool import Spool, SpoolFull, entry_fields
from ._stop import Stopper
from .config import PumpConfig

log = get_logger(__name__)

SPOOL_TICK_S = 0.1
MOVE_ROUNDS = 20  # batches moved per shard per tick at most
CLAIM_AFTER_S = 1.0  # the worker's batch in hand this long (a hung write) is claimed


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Spooler:
    """The thread that moves this worker's share of its group's backlog into its spool."""

    def __init__(self, config: PumpConfig, sink: str, consumer: str, spool: Spool,
                 counters: Slot, stopper: Stopper, r: redis.Redis | None = None,
                 busy_s: Callable[[], float | None] = lambda: None) -> None:
        self.config = config
        self.group = sink
        self.sink = sink
        self.worker_consumer = consumer
        self.consumer = f"{consumer}:spool"
        self.spool = spool
        self.counters = counters
        self.stopper = stopper
        self.r = r if r is not None else connect(config)
        self.keys = config.shard_keys()
        self.budget = Budget(config, self.r)
        self.busy_s = busy_s  # how long the worker has had its stream batch in hand
        self.active: dict[str, bool] = {}
        self.full = False
        self.limited = RateLimited(10.0, log)
        self.thread: threading.Thread | None = None

    def start(self) -> Spooler:
        self.thread = threading.Thread(target=self.run, name=f"spooler-{self.sink}",
                                       daemon=True)
        self.thread.start()
        return self

    @property
    def after(self) -> int:
        """Bytes the group may hold back on a shard before it spools."""
        return self.budget.per_shard() // 2

    def moving(self) -> bool:
        return any(self.active.values())

    def run(self) -> None:
        while not self.stopper.is_set():
            try:
                self.tick()
            except redis.RedisError as exc:
                self.limited.warning("redis", "Spooler: Redis call failed; retrying.",
                                     sink=self.sink, error=exc)
            except OSError as exc:
                self.limited.error("disk", "Spooler: writing the spool failed; retrying.",
                                   sink=self.sink, spool=str(self.spool.dir), error=exc)
            self._gauges()
            self.stopper.wait(SPOOL_TICK_S)

    def _gauges(self) -> None:
        self.counters.set("spool_bytes", float(self.spool.bytes))
        self.counters.set("spool_entries", float(len(self.spool)))

    def held_bytes(self, key: str) -> int:
        """What the group holds back on ``key``, in bytes: its undelivered and pending
        entries, or the whole stream when its oldest pending entry is the stream's first
        (it pins trimming), times Redis's bytes per entry."""
        mine = next((g for g in group_info(self.r, key) if _s(g["name"]) == self.group), None)
        if mine is None:
            return 0
        lag, pending = mine.get("lag"), int(mine.get("pending") or 0)
        pipe = self.r.pipeline(transaction=False)
        pipe.xlen(key)
        pipe.memory_usage(key)
        pipe.xrange(key, count=1)
        pipe.xinfo_stream(key)
        length, usage, first, info = pipe.execute()
        if not length:
            return 0
        last = _s(mine.get("last-delivered-id") or "0-0")
        if parse_entry_id(last) >= parse_entry_id(_s(info.get("last-generated-id") or "0-0")):
            # caught up: Redis's own lag can be stale after an AOF restart or a failover
            # (seen as 203 with nothing left to read), which kept the spooler moving and
            # the worker off the stream for good
            lag = 0
        held = (int(lag) if lag is not None else int(length)) + pending
        if pending and first:
            low = self.r.xpending(key, self.group).get("min")
            if low is not None and _s(low) == _s(first[0][0]):
                held = int(length)
        return int(min(held, int(length)) * int(usage or 0) / int(length))

    def tick(self) -> None:
        self.budget.refresh(time.monotonic())
        for key in self.keys:
            held = self.held_bytes(key)
            was = self.active.get(key, False)
            now = held >= self.after or (was and held >= self.after // 2)
            if now != was:
                self.active[key] = now
                if now:
                    self.limited.warning(
                        "spooling", "Sink lags over its share of the stream; moving its "
                        "backlog to its spool.", sink=self.sink, stream=key, held_bytes=held,
                        spool_after_bytes=self.after)
                else:
                    self.limited.log(
                        "not-spooling", logging.INFO, "Sink is within its share of the "
                        "stream again; not spooling.", sink=self.sink, stream=key, held_bytes=held,
                        spool_after_bytes=self.after)
            if now:
                self.move(key)

    def move(self, key: str) -> int:
        """Move this worker's pending and new entries of ``key`` into the spool.

        Nothing while the worker has had a batch in hand for less than
        ``CLAIM_AFTER_S``: it is acknowledged soon, or claimed on a later tick,
        before any newer entry (the sink gets the stream's order)."""
        busy = self.busy_s()
        if busy is not None and busy < CLAIM_AFTER_S:
            return 0
        moved = self._move_pending(key)
        for _ in range(MOVE_ROUNDS):
            if self.stopper.is_set():
                break
            resp = self.r.xreadgroup(self.group, self.consumer, {key: ">"},
                                     count=self.config.read_count)
            entries = resp[0][1] if resp else []
            if not entries or not self._spool(key, entries):
                break
            moved += len(entries)
            if self.held_bytes(key) < self.after // 2:
                break
        return moved

    def _move_pending(self, key: str) -> int:
        """The spool consumer's own pending entries, then the worker consumer's, claimed."""
        moved = 0
        resp = self.r.xreadgroup(self.group, self.consumer, {key: "0"},
                                 count=self.config.read_count)
        got = resp[0][1] if resp else []
        gone = [e for e, f in got if not f]  # trimmed while pending: nothing to keep
        if gone:
            self.r.xack(key, self.group, *gone)
        entries = [(e, f) for e, f in got if f]
        if entries and self._spool(key, entries):
            moved += len(entries)
        rows = self.r.xpending_range(key, self.group, min="-", max="+",
                                     count=self.config.read_count,
                                     consumername=self.worker_consumer)
        ids = [row["message_id"] for row in rows]
        if ids:
            got = [(e, f) for e, f in self.r.xclaim(key, self.group, self.consumer, 0, ids)
                   if f]
            if got and self._spool(key, got):
                moved += len(got)
        return moved

    def _spool(self, key: str, entries: list[tuple[Any, Any]]) -> bool:
        """Append ``entries`` (fsync) and only then acknowledge them; False if full (block)."""
        batch = [(key, _s(eid), entry_fields(fields)) for eid, fields in entries]
        try:
            dropped = self.spool.append(batch)
        except SpoolFull as exc:
            if not self.full:
                self.full = True
                log.warning("Spool is full (overflow: block); the backlog stays in Redis.",
                            sink=self.sink, error=str(exc))
            return False
        if self.full:
            self.full = False
            log.info("Spool has room again.", sink=self.sink)
        self.r.xack(key, self.group, *[eid for eid, _ in entries])
        c = self.counters
        c.add("entries_spooled", len(entries))
        c.add("records_spooled", sum(_records(f) for _, _, f in batch))
        if dropped:
            c.add("spool_dropped_records", dropped)
            log.warning("Spool is full; dropped its oldest records (overflow: drop_oldest).",
                        sink=self.sink, spool=str(self.spool.dir), dropped_records=dropped,
                        spool_max_bytes=self.spool.max_bytes)
        self._gauges()
        return True


def _records(fields: dict[bytes, bytes]) -> int:
    try:
        return int(fields.get(b"n", b"1"))
    except ValueError:
        return 1


class SpoolFeeder:
    """The worker's delivery from its spool: oldest first, committed after the sink took it."""

    def __init__(self, spool: Spool, delivery: Any, counters: Slot, stopper: Stopper,
                 read_count: int, on_outage: Any) -> None:
        self.spool = spool
        self.delivery = delivery
        self.counters = counters
        self.stopper = stopper
        self.read_count = read_count
        self.on_outage = on_outage
        self.attempts = 0  # failed deliveries of the head batch
        self.limited = RateLimited(10.0, log)

    def step(self) -> int:
        got = self.spool.peek(self.read_count)
        if not got:
            self.stopper.wait(0.05)  # the spooler is moving: the stream waits for it
            return 0
        key = got[0][1][0]  # one shard per delivery, in spool order
        run = got[:next((i for i, (_, e) in enumerate(got) if e[0] != key), len(got))]
        entries = [(eid, fields) for _, (_, eid, fields) in run]
        ids = {eid for eid, _ in entries}
        self.attempts += 1
        self.delivery.done.clear()
        self.delivery.handle(key, entries, {eid: self.attempts for eid in ids})
        if ids <= self.delivery.done:
            self.spool.commit([f for f, _ in run])
            self.counters.add("entries_unspooled", len(run))
            self.counters.set("spool_bytes", float(self.spool.bytes))
            self.counters.set("spool_entries", float(len(self.spool)))
            if self.attempts > 1:
                self.counters.set("state", STATE_RUNNING)
                self.on_outage(None)
            self.attempts = 0
            return len(run)
        self.counters.set("state", STATE_OUTAGE)
        self.on_outage("the sink does not take the spool's oldest batch")
        self.limited.warning("spool-retry", "The sink does not take the spool's oldest "
                             "batch; retrying.", sink=self.delivery.sink_name,
                             entries=len(run), attempts=self.attempts)
        self.stopper.wait(self.delivery.policy.backoff(min(self.attempts, 10)))
        return 0
