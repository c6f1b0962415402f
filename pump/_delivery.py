"""Delivering prepared entries to a sink: write with retries, ack, hold an outage,
dead-letter what can never be delivered.

- ``PermanentError``: a batch of several entries is split and each entry is
  written alone; an entry that is still rejected is dead-lettered at once.
- retries exhausted and the sink's health check fails: an *outage*. The
  worker keeps the batch, keeps its entries claimed (``XCLAIM JUSTID``
  resets their idle time without counting a delivery) and retries with
  backoff until the sink is back. Only this sink's group waits.
- retries exhausted while the sink is healthy: the batch may be poison. Its
  entries stay pending and are re-read later one at a time; the PEL delivery
  counter counts the attempts, and an entry delivered ``max_deliveries``
  times without success is dead-lettered (``pump/_deadletter.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from collector.common.counters import Slot
from collector.common.log import RateLimited, get_logger

from ._deadletter import DeadItem, DeadLetters, DeadReason
from ._metrics import STATE_OUTAGE, STATE_RUNNING
from ._pipeline import EntryRecords, Prepared, RecordPipeline
from ._retry import RetryPolicy, WriteFailed, write_with_retries
from ._stop import Stopper
from .config import PumpConfig, PumpSpec
from .sinks import Batch, PermanentError, Sink

log = get_logger(__name__)


class Delivery:
    """One sink's delivery of the entries its worker read (see the module docstring)."""

    def __init__(self, *, config: PumpConfig, spec: PumpSpec, sink_name: str, sink: Sink,
                 r: redis.Redis, consumer: str, counters: Slot, stopper: Stopper,
                 policy: RetryPolicy, limited: RateLimited,
                 retry_at: Callable[[float], None]) -> None:
        self.config = config
        self.spec = spec
        self.sink_name = sink_name
        self.group = sink_name
        self.sink = sink
        self.r = r
        self.consumer = consumer
        self.counters = counters
        self.stopper = stopper
        self.policy = policy
        self.limited = limited
        self.retry_at = retry_at  # re-read the pending entries by then
        self.pipeline = RecordPipeline(
            spec.filters, omit=config.omit_for(sink_name),
            detail_fields=config.detail_fields, max_record_size=spec.max_record_bytes,
            sink=sink_name)
        self.dead = DeadLetters(r, sink_name, self.group, counters)

    def handle(self, key: str, entries: list[tuple[Any, Any]],
               deliveries: dict[str, int] | None) -> None:
        """Prepare ``entries`` of shard ``key`` and deliver them."""
        prep: Prepared = self.pipeline.prepare(entries)
        c = self.counters
        c.add("records_in", prep.n_in)
        if prep.n_filtered:
            c.add("records_filtered", prep.n_filtered)
        if prep.n_trimmed:
            c.add("records_trimmed", prep.n_trimmed)
        if prep.dead:
            c.add("decode_errors", prep.n_decode_errors)
            ack = [d.entry_id for d in prep.dead if d.reason is DeadReason.UNDECODABLE_ENTRY]
            self.dead.write(key, prep.dead, ack, deliveries, records=len(prep.dead))
            self.limited.warning("decode", "Dead-lettered what did not decode.",
                                 sink=self.sink_name, stream=key, items=len(prep.dead),
                                 error=prep.dead[0].error)
        if prep.ack_only:
            self.r.xack(key, self.group, *prep.ack_only)
            c.add("entries_acked", len(prep.ack_only))
        if prep.entries:
            self.deliver(key, prep.entries, deliveries)

    def deliver(self, key: str, entries: list[EntryRecords],
                deliveries: dict[str, int] | None) -> None:
        max_d = self.config.max_deliveries
        if deliveries:
            over = [e for e in entries if deliveries.get(e.entry_id, 1) - 1 >= max_d]
            if over:
                self._dead_letter_entries(key, over, DeadReason.MAX_DELIVERIES,
                                          f"delivered {max_d} times without success",
                                          deliveries)
                entries = [e for e in entries if deliveries.get(e.entry_id, 1) - 1 < max_d]
                if not entries:
                    return
        batch = _batch(key, entries)
        try:
            self._write(batch)
        except PermanentError as exc:
            if len(entries) > 1:
                for e in entries:  # find the entry the sink rejects
                    self.deliver(key, [e], deliveries)
                return
            self._dead_letter_entries(key, entries, DeadReason.PERMANENT, str(exc), deliveries)
            return
        except WriteFailed as exc:
            if self.stopper.is_set():
                return  # left pending; redelivered on the next start
            if not self.sink_healthy():
                self._outage(key, entries, batch, deliveries)
                return
            due = []
            for e in entries:
                d = (deliveries or {}).get(e.entry_id, 1)
                if d >= max_d:
                    self._dead_letter_entries(key, [e], DeadReason.MAX_DELIVERIES,
                                              f"delivered {d} times; last error: {exc.error}",
                                              deliveries)
                else:
                    due.append(d)
            if due:
                pause = self.policy.backoff(min(due))
                self.retry_at(time.monotonic() + pause)
                self.limited.warning("retry-later",
                                     "Batch failed while the sink is healthy; retrying it later.",
                                     sink=self.sink_name, entries=len(due), error=exc.error)
            return
        self._acked(key, batch)

    def _write(self, batch: Batch) -> None:
        c = self.counters
        overall = time.monotonic() + self.config.batch_deadline_s
        stopper = self.stopper
        shutdown_s = self.config.shutdown_timeout_s

        def deadline() -> float:
            if stopper.is_set() and stopper.stopped_at is not None:
                return min(overall, stopper.stopped_at + shutdown_s)
            return overall

        def on_attempt(attempt_deadline: float) -> None:
            c.set("write_deadline", attempt_deadline)

        def on_failure(err: BaseException, attempt: int) -> None:
            c.add("write_errors")
            self.limited.warning("write", "Sink write failed.",
                                 sink=self.sink_name, attempt=attempt, error=err)

        t0 = time.monotonic()
        try:
            attempts = write_with_retries(self.sink, batch, self.policy, deadline=deadline,
                                          stop=stopper, on_attempt=on_attempt,
                                          on_failure=on_failure)
        finally:
            c.set("write_deadline", 0.0)
        c.observe("write_seconds", time.monotonic() - t0)
        if attempts > 1:
            c.add("write_retries", attempts - 1)

    def _acked(self, key: str, batch: Batch) -> None:
        self.r.xack(key, self.group, *batch.entry_ids)
        c = self.counters
        c.add("records_out", len(batch.records))
        c.add("batches_written")
        c.add("entries_acked", len(batch.entry_ids))

    def sink_healthy(self) -> bool:
        try:
            self.sink.health_check(deadline=time.monotonic() + min(self.spec.timeout_s, 10.0))
            return True
        except Exception as exc:
            self.limited.warning("health", "Sink health check failed.",
                                 sink=self.sink_name, error=exc)
            return False

    def _outage(self, key: str, entries: list[EntryRecords], batch: Batch,
                deliveries: dict[str, int] | None) -> None:
        """Hold the batch until the sink is back (or we are told to stop)."""
        c = self.counters
        c.set("state", STATE_OUTAGE)
        log.warning("Sink is down; holding the batch until it is back.",
                    sink=self.sink_name, entries=len(entries))
        ids = [e.entry_id for e in entries]
        attempt = 0
        try:
            while not self.stopper.is_set():
                if self.stopper.wait(self.policy.backoff(min(attempt, 10))):
                    return
                attempt += 1
                c.set("heartbeat", time.monotonic())
                try:  # keep the entries ours without counting a delivery
                    self.r.xclaim(key, self.group, self.consumer, 0, ids, justid=True)
                except redis.RedisError as exc:
                    self.limited.warning("redis", "Redis call failed.",
                                         sink=self.sink_name, error=exc)
                    continue
                try:
                    self._write(batch)
                except PermanentError:
                    c.set("state", STATE_RUNNING)
                    self.deliver(key, entries, deliveries)
                    return
                except WriteFailed:
                    if self.sink_healthy():
                        c.set("state", STATE_RUNNING)
                        self.deliver(key, entries, deliveries)  # poison path now
                        return
                    continue
                self._acked(key, batch)
                log.info("Sink is back.", sink=self.sink_name)
                return
        finally:
            if c.get("state") == STATE_OUTAGE:
                c.set("state", STATE_RUNNING)

    def _dead_letter_entries(self, key: str, entries: Sequence[EntryRecords],
                             reason: DeadReason, error: str,
                             deliveries: dict[str, int] | None) -> None:
        items = [DeadItem(dict(e.fields), reason, error, e.entry_id) for e in entries]
        self.dead.write(key, items, [e.entry_id for e in entries], deliveries,
                        records=sum(len(e.records) for e in entries))
        self.limited.warning("dead", "Dead-lettered entries.",
                             sink=self.sink_name, stream=key, entries=len(entries),
                             reason=reason.value, error=error)


def _batch(key: str, entries: Sequence[EntryRecords]) -> Batch:
    """The sink's batch of ``entries`` (records in order, entry ids and sizes)."""
    if len(entries) == 1:
        records = entries[0].records
    else:
        records = [r for e in entries for r in e.records]
    return Batch(records, stream=key, entry_ids=[e.entry_id for e in entries],
                 entry_sizes=[len(e.records) for e in entries])
