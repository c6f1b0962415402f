"""Delivering prepared entries to a sink: write with retries, ack, hold an outage,
dead-letter only the records that cannot be delivered.

Poison is per record; an outage is not poison:

- ``PermanentError`` naming records (``rejected``): the sink wrote the others;
  the named records are dead-lettered, one dead letter each, and the entries
  acknowledged.
- ``PermanentError`` naming none: if the sink's health check (which does what
  a write does) fails, it is an outage (below). Otherwise the worker looks
  for the records at fault by writing halves of the batch (whole entries
  first, then halves of an entry) down to single records (:meth:`Delivery.isolate`):
  a record that fails alone is dead-lettered, the others are written. If
  every record of a batch of several fails alone, the error is one any record
  would hit: an outage, not poison. (Isolating: ``pump/_isolate.py``.)
- retries exhausted with an ``OutageError`` (a full disk, a missing table), or
  while the health check fails: an *outage*. The worker keeps the batch, keeps
  its entries claimed (``XCLAIM JUSTID`` of those still its own resets their
  idle time without counting a delivery: ``pump/_ownclaim.py``), marks its
  slot (``/readyz`` says 503 with the reason) and retries with backoff until
  the sink takes it. Nothing is dead-lettered for an outage. Only this sink's group waits.
- retries exhausted while the sink is healthy: the batch may be poison. Its
  entries stay pending and are re-read later one at a time; the PEL delivery
  counter counts the attempts, and once an entry has been delivered
  ``max_deliveries`` times its records are isolated as above (one attempt per
  part), and only those that fail alone are dead-lettered.

Dead letters: ``pump/_deadletter.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from collector.common.counters import Slot
from collector.common.log import RateLimited, get_logger

from ._claims import Claims
from ._deadletter import DeadLetters, DeadReason
from ._isolate import Isolated, PerRecord
from ._metrics import STATE_OUTAGE, STATE_RUNNING
from ._ownclaim import claim_own
from ._pipeline import EntryRecords, Prepared, RecordPipeline
from ._retry import RetryPolicy, WriteFailed, write_with_retries
from ._stop import Stopper
from .config import PumpConfig, PumpSpec
from .sinks import Batch, OutageError, PermanentError, Sink

log = get_logger(__name__)

class Delivery(PerRecord):
    """One sink's delivery of the entries its worker read (see the module docstring)."""

    def __init__(self, *, config: PumpConfig, spec: PumpSpec, sink_name: str, sink: Sink,
                 r: redis.Redis, consumer: str, counters: Slot, stopper: Stopper,
                 policy: RetryPolicy, limited: RateLimited,
                 retry_at: Callable[[float], None],
                 on_outage: Callable[[str | None], None] = lambda reason: None) -> None:
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
        self.on_outage = on_outage  # the outage's reason, None when it is over
        self.pipeline = RecordPipeline(
            spec.filters, omit=config.omit_for(sink_name),
            detail_fields=config.detail_fields, max_record_size=spec.max_record_bytes,
            sink=sink_name, decode=not sink.forwards_bytes,
            encode=sink.encode if type(sink).encode is not Sink.encode else None)
        self.dead = DeadLetters(r, sink_name, self.group, counters,
                                config.dead_letter_max_entries, limited)
        # the entries in hand (the reader says which) claimed again before a write
        self.claims = Claims(r, self.group, consumer, claim_idle_s=config.claim_idle_ms / 1000,
                             deadline_s=config.batch_deadline_s, limited=limited,
                             sink_name=sink_name)
        self.first_failure: dict[str, float] = {}  # entry id -> time.time() it first failed
        self.done: set[str] = set()  # entries delivered or dead-lettered (the spool's commit)
        self.spooling: Callable[[], bool] = lambda: False  # the spooler moves entries now

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
            self.dead.write(key, prep.dead, ack, deliveries)
            self.done.update(ack)
            self.limited.warning("decode", "Dead-lettered what did not decode.",
                                 sink=self.sink_name, stream=key, items=len(prep.dead),
                                 error=prep.dead[0].error)
        if prep.ack_only:
            self.r.xack(key, self.group, *prep.ack_only)
            c.add("entries_acked", len(prep.ack_only))
            self.done.update(prep.ack_only)
        if prep.entries:
            self.deliver(key, prep.entries, deliveries)

    # -- one delivery ------------------------------------------------------------
    def deliver(self, key: str, entries: list[EntryRecords],
                deliveries: dict[str, int] | None) -> None:
        max_d = self.config.max_deliveries
        if deliveries:  # delivered past the limit (a crash before giving up): isolate
            over = [e for e in entries if deliveries.get(e.entry_id, 1) - 1 >= max_d]
            if over:
                entries = [e for e in entries if e not in over]
                self._isolate_or_hold(key, over, deliveries, DeadReason.MAX_DELIVERIES)
                if not entries:
                    return
        batch = _batch(key, entries)
        try:
            self.write(batch)
        except PermanentError as exc:
            self._failed(entries)
            self._permanent(key, entries, exc, deliveries)
            return
        except WriteFailed as exc:
            self._failed(entries)
            if self.stopper.is_set():
                return  # left pending; redelivered on the next start
            if isinstance(exc.error, OutageError) or not self.sink_healthy():
                self._outage(key, entries, deliveries, exc.error)
                return
            self._retry_later(key, entries, deliveries, exc)
            return
        self._acked(key, batch)

    def _permanent(self, key: str, entries: list[EntryRecords], exc: PermanentError,
                   deliveries: dict[str, int] | None) -> None:
        if exc.rejected:
            self._rejected(key, entries, exc.rejected, deliveries)
        elif not self.sink_healthy():
            self._outage(key, entries, deliveries, exc)
        else:
            self._isolate_or_hold(key, entries, deliveries, DeadReason.PERMANENT)

    def _retry_later(self, key: str, entries: list[EntryRecords],
                     deliveries: dict[str, int] | None, exc: WriteFailed) -> None:
        max_d = self.config.max_deliveries
        due, spent = [], []
        for e in entries:
            d = (deliveries or {}).get(e.entry_id, 1)
            (spent if d >= max_d else due).append((e, d))
        if spent:
            self._isolate_or_hold(key, [e for e, _ in spent], deliveries,
                                  DeadReason.MAX_DELIVERIES)
        if due:
            self.retry_at(time.monotonic() + self.policy.backoff(min(d for _, d in due)))
            self.limited.warning("retry-later",
                                 "Batch failed while the sink is healthy; retrying it later.",
                                 sink=self.sink_name, entries=len(due), error=exc.error)

    def _isolate_or_hold(self, key: str, entries: list[EntryRecords],
                         deliveries: dict[str, int] | None, reason: DeadReason) -> None:
        """Isolate the records at fault; hold as an outage if every one failed."""
        result = self.isolate(key, entries, deliveries, reason)
        if result is Isolated.OUTAGE:
            self._outage(key, entries, deliveries,
                         "every record of the batch fails alone: an error any record hits")
        elif result is Isolated.ABORTED:
            self.retry_at(time.monotonic() + self.policy.backoff(3))

    # -- writing -------------------------------------------------------------------
    def write(self, batch: Batch, *, single_attempt: bool = False) -> None:
        """Write ``batch`` with retries under ``batch_deadline_s``, or in one attempt
        (each attempt under the sink's ``timeout_s`` and within ``batch_deadline_s``).

        First the entries in hand are claimed again if they could otherwise go idle past
        ``claim_idle_ms`` before the write ends (``pump/_claims.py``)."""
        self.claims.keep()
        c = self.counters
        now = time.monotonic()
        overall = now + self.config.batch_deadline_s
        stopper = self.stopper
        shutdown_s = self.config.shutdown_timeout_s
        taken = False  # the spooler moved the batch's entries into the spool
        spent = False  # the one attempt of a single_attempt write failed

        def deadline() -> float:
            if taken or spent:
                return 0.0  # no more attempts (taken: the spool delivers these entries)
            if stopper.is_set() and stopper.stopped_at is not None:
                return min(overall, stopper.stopped_at + shutdown_s)
            return overall

        def on_attempt(attempt_deadline: float) -> None:
            c.set("write_deadline", attempt_deadline)

        def on_failure(err: BaseException, attempt: int) -> None:
            nonlocal taken, spent
            spent = single_attempt
            c.add("write_errors")
            self.limited.warning("write", "Sink write failed.",
                                 sink=self.sink_name, attempt=attempt, error=err)
            if self.spooling() and batch.entry_ids and batch.stream:
                try:  # still ours? (this also keeps them ours, counting no delivery)
                    taken = not claim_own(self.r, batch.stream, self.group, self.consumer,
                                          list(batch.entry_ids))
                except redis.RedisError:
                    pass

        try:
            attempts = write_with_retries(self.sink, batch, self.policy, deadline=deadline,
                                          stop=stopper, on_attempt=on_attempt,
                                          on_failure=on_failure)
        except PermanentError:
            c.add("write_errors")  # a failed attempt too
            raise
        finally:
            c.set("write_deadline", 0.0)
        c.observe("write_seconds", time.monotonic() - now)
        if attempts > 1:
            c.add("write_retries", attempts - 1)

    def _acked(self, key: str, batch: Batch) -> None:
        self.r.xack(key, self.group, *batch.entry_ids)
        c = self.counters
        c.add("records_out", len(batch))
        c.add("batches_written")
        c.add("entries_acked", len(batch.entry_ids))
        for eid in batch.entry_ids:
            self.first_failure.pop(eid, None)
        self.done.update(batch.entry_ids)

    def _failed(self, entries: Sequence[EntryRecords]) -> None:
        now = time.time()
        for e in entries:
            self.first_failure.setdefault(e.entry_id, now)
        if len(self.first_failure) > 100_000:  # entries we gave up on long ago
            self.first_failure.clear()

    def sink_healthy(self) -> bool:
        try:
            self.sink.health_check(deadline=time.monotonic() + min(self.spec.timeout_s, 10.0))
            return True
        except Exception as exc:
            self.limited.warning("health", "Sink health check failed.",
                                 sink=self.sink_name, error=exc)
            return False

    # -- outages -------------------------------------------------------------------
    def _outage(self, key: str, entries: list[EntryRecords],
                deliveries: dict[str, int] | None, error: object) -> None:
        """Hold the batch until the sink takes it (or we are told to stop)."""
        c = self.counters
        ids = [e.entry_id for e in entries]
        try:
            if not claim_own(self.r, key, self.group, self.consumer, ids):
                return  # not ours: moved into the spool, or fed from it (it retries)
        except redis.RedisError:
            pass
        c.set("state", STATE_OUTAGE)
        self.on_outage(f"{type(error).__name__}: {error}" if isinstance(error, Exception)
                       else str(error))
        log.warning("Sink is down; holding the batch until it is back.",
                    sink=self.sink_name, entries=len(entries), error=error)
        batch = _batch(key, entries)
        attempt = 0
        written = False
        try:
            while not self.stopper.is_set():
                if self.stopper.wait(self.policy.backoff(min(attempt, 10))):
                    return
                attempt += 1
                c.set("heartbeat", time.monotonic())
                try:  # keep the entries ours without counting a delivery
                    if not claim_own(self.r, key, self.group, self.consumer, ids):
                        # none is ours any more: the spooler moved them into the spool
                        # (or they came from it); the spool feeds them again
                        return
                except redis.RedisError as exc:
                    self.limited.warning("redis", "Redis call failed.",
                                         sink=self.sink_name, error=exc)
                    continue
                try:
                    self.write(batch)
                except PermanentError as exc:
                    if exc.rejected:
                        self._rejected(key, entries, exc.rejected, deliveries)
                        return
                    if not self.sink_healthy():
                        continue
                    result = self.isolate(key, entries, deliveries, DeadReason.PERMANENT)
                    if result is Isolated.DONE:
                        return
                    continue
                except WriteFailed as exc:
                    if isinstance(exc.error, OutageError) or not self.sink_healthy():
                        self.on_outage(f"{type(exc.error).__name__}: {exc.error}")
                        continue
                    self._retry_later(key, entries, deliveries, exc)  # poison path now
                    return
                written = True  # acknowledged below, once the outage is over
                break
        finally:  # the one place an outage ends, however it ends
            if c.get("state") == STATE_OUTAGE:
                c.set("state", STATE_RUNNING)
            self.on_outage(None)
        if written:
            # Ready again before the acknowledgement, so that whoever sees the
            # backlog drained also sees the sink ready.
            self._acked(key, batch)
            log.info("Sink is back.", sink=self.sink_name)


def _batch(key: str, entries: Sequence[EntryRecords]) -> Batch:
    """The sink's batch of ``entries`` (their records' columns, entry ids and sizes)."""
    return Batch(chunks=[e.records for e in entries], stream=key,
                 entry_ids=[e.entry_id for e in entries],
                 entry_sizes=[len(e.records) for e in entries])
