"""One pump worker: a consumer of its sink's group, one process per worker.

Loop (``Worker.step``)::

    own pending entries due?  -> re-read them one entry at a time (XREADGROUP id)
    time to reclaim?          -> XAUTOCLAIM JUSTID entries idle > claim_idle_ms
    XREADGROUP >  (BLOCK read_block_s, COUNT read_count) over every shard
      -> decode (bad entry / record -> dead-letter stream, counted)
      -> filters -> omit detail -> max_record_bytes trim
      -> sink.write(batch, deadline) through the retry wrapper
      -> XACK only after the sink accepted

Failures:

- ``PermanentError``: a batch of several entries is split and each entry is
  written alone; an entry that is still rejected is dead-lettered at once.
- retries exhausted and the sink's health check fails: an *outage*. The
  worker keeps the batch, keeps its entries claimed (``XCLAIM JUSTID``
  resets their idle time without counting a delivery) and retries with
  backoff until the sink is back. Only this sink's group waits.
- retries exhausted while the sink is healthy: the batch may be poison. Its
  entries stay pending and are re-read later one at a time; the PEL delivery
  counter (kept by Redis, so it survives restarts) counts the attempts, and
  an entry delivered ``max_deliveries`` times without success goes to
  ``<shard>:dead:<sink>`` with the error and its original fields, then is
  acknowledged.

Consumer names are ``<host>:<sink>:<index>``, so a restarted worker finds
its own pending entries at once; entries of a consumer that never returns
are claimed by the others after ``claim_idle_ms``.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import redis

from collector.common.counters import Slot
from collector.common.log import RateLimited, get_logger
from collector.common.log import setup as setup_logging

from ._metrics import (
    STATE_OUTAGE,
    STATE_RUNNING,
    STATE_STARTING,
    STATE_STOPPING,
    WORKER_COUNTERS,
)
from ._pipeline import DeadItem, Prepared, RecordPipeline
from ._redis import connect, ensure_groups
from ._retry import RetryPolicy, WriteFailed, write_with_retries
from .config import PumpConfig, dead_letter_key, import_plugins
from .sinks import Batch, PermanentError, Record, Sink, build_sink

log = get_logger(__name__)

_STOP_SIGNALS = {signal.SIGTERM}


class Stopper:
    """Stop requests seen by a worker run in a thread (tests): ``request()`` from outside."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.stopped_at: float | None = None

    def request(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        if self.stopped_at is None and self._event.is_set():
            self.stopped_at = time.monotonic()
        return self.stopped_at is not None

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, returning early when a stop is requested."""
        if not self.is_set():
            self._event.wait(max(0.0, seconds))
            return self.is_set()
        threading.Event().wait(max(0.0, seconds))  # already stopping: a plain pause
        return True


class SignalStopper(Stopper):
    """Stop requests by SIGTERM in a worker process, without an async handler.

    SIGTERM is blocked and collected with ``sigpending``/``sigtimedwait``, so
    a signal never interrupts a write half way; a second SIGTERM exits at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor owns Ctrl-C
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)

    def _seen(self) -> None:
        self.count += 1
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        elif self.count >= 2:
            os._exit(1)

    def request(self) -> None:
        self._seen()

    def is_set(self) -> bool:
        if _STOP_SIGNALS & signal.sigpending():
            if signal.sigtimedwait(_STOP_SIGNALS, 0) is not None:
                self._seen()
        return self.stopped_at is not None

    def wait(self, seconds: float) -> bool:
        self.is_set()
        if signal.sigtimedwait(_STOP_SIGNALS, max(0.0, seconds)) is not None:
            self._seen()
        return self.stopped_at is not None


def consumer_name(sink: str, index: int) -> str:
    return f"{socket.gethostname()}:{sink}:{index}"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Worker:
    """A consumer of one sink's group. ``run()`` until stopped; ``step()`` is one turn."""

    def __init__(self, config: PumpConfig, sink_name: str, index: int = 0, *,
                 counters: Slot | None = None, stopper: Stopper | None = None,
                 sink: Sink | None = None, r: redis.Redis | None = None,
                 consumer: str | None = None) -> None:
        self.config = config
        self.sink_name = sink_name
        self.spec = config.pumps[sink_name]
        self.group = sink_name
        self.consumer = consumer or consumer_name(sink_name, index)
        self.keys = config.shard_keys()
        self.counters = counters or WORKER_COUNTERS.local_slot()
        self.stopper = stopper or Stopper()
        self.sink = sink if sink is not None else build_sink(
            config.sink_type(sink_name), self.spec.meta)
        self.r = r if r is not None else connect(config, block_s=config.read_block_s)
        self.pipeline = RecordPipeline(
            self.spec.filters, omit=config.omit_for(sink_name),
            detail_fields=config.detail_fields, max_record_size=self.spec.max_record_bytes)
        self.policy = RetryPolicy(self.spec.timeout_s, config.retry_initial_ms / 1000,
                                  config.retry_max_ms / 1000)
        self.block_ms = max(1, int(config.read_block_s * 1000))
        self.pending_due = 0.0  # look at our own pending entries first (restart)
        self.claim_due = 0.0
        self.claim_every = min(config.claim_idle_ms / 2000, 30.0)
        self.parent_pid = os.getppid()
        self.limited = RateLimited(10.0, log)
        self.redis_failures = 0

    # -- life cycle --------------------------------------------------------
    def run(self) -> int:
        c = self.counters
        c.set("pid", os.getpid())
        c.set("state", STATE_STARTING)
        log.info("Worker starting.", sink=self.sink_name, consumer=self.consumer)
        if not self._open_sink():
            return 2 if not self.stopper.is_set() else 0
        c.set("state", STATE_RUNNING)
        while not self.stopper.is_set():
            c.set("heartbeat", time.monotonic())
            if os.getppid() != self.parent_pid:
                log.warning("The supervisor went away; worker stops.",
                            sink=self.sink_name, consumer=self.consumer)
                break
            try:
                self.step()
                self.redis_failures = 0
            except redis.RedisError as exc:
                self._redis_trouble(exc)
        c.set("state", STATE_STOPPING)
        left = self._time_left_for_shutdown()
        try:
            self.sink.close(left)
        except Exception as exc:
            log.warning("Closing the sink failed.", sink=self.sink_name, error=exc)
        log.info("Worker stopped.", sink=self.sink_name, consumer=self.consumer)
        return 0

    def _time_left_for_shutdown(self) -> float:
        if self.stopper.stopped_at is None:
            return self.config.shutdown_timeout_s
        return max(0.1, self.stopper.stopped_at + self.config.shutdown_timeout_s
                   - time.monotonic())

    def _open_sink(self) -> bool:
        attempt = 0
        while not self.stopper.is_set():
            try:
                self.sink.open()
                ensure_groups(self.r, self.keys, self.group)
                return True
            except PermanentError as exc:
                log.error("The sink cannot be opened.", sink=self.sink_name, error=exc)
                return False
            except Exception as exc:
                self.limited.warning("open", "Sink or Redis not ready; retrying.",
                                     sink=self.sink_name, error=exc)
                self.stopper.wait(self.policy.backoff(attempt))
                attempt += 1
        return False

    def _redis_trouble(self, exc: redis.RedisError) -> None:
        self.redis_failures += 1
        self.pending_due = 0.0  # an ack may have been lost: look at our pending again
        if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
            try:
                ensure_groups(self.r, self.keys, self.group)
                log.warning("Consumer group was missing; created it again.",
                            sink=self.sink_name)
                return
            except redis.RedisError as exc2:
                exc = exc2
        self.limited.warning("redis", "Redis call failed; retrying.",
                             sink=self.sink_name, error=exc,
                             url=self.config.redacted_redis_url())
        self.stopper.wait(self.policy.backoff(min(self.redis_failures, 6)))

    # -- one turn ------------------------------------------------------------
    def step(self) -> int:
        """Read and deliver one round; returns the number of entries handled."""
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
        resp = self.r.xreadgroup(self.group, self.consumer, {k: ">" for k in self.keys},
                                 count=self.config.read_count, block=self.block_ms)
        for key, entries in resp or ():
            if entries:
                handled += len(entries)
                self.handle(_s(key), entries, None)
        return handled

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
                     sink=self.sink_name, consumer=self.consumer, entries=claimed)
        return claimed > 0

    def _own_pending(self) -> int:
        """Re-read this consumer's pending entries one at a time (counts a delivery)."""
        n = 0
        for key in self.keys:
            last: Any = "0-0"
            while not self.stopper.is_set():
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
                self.handle(key, [(eid, fields)], {_s(eid): deliveries})
        return n

    # -- delivery -------------------------------------------------------------
    def handle(self, key: str, entries: list[tuple[Any, Any]],
               deliveries: dict[str, int] | None) -> None:
        prep: Prepared = self.pipeline.prepare(entries)
        c = self.counters
        c.add("records_in", prep.n_in)
        if prep.n_filtered:
            c.add("records_filtered", prep.n_filtered)
        if prep.n_trimmed:
            c.add("records_trimmed", prep.n_trimmed)
        if prep.dead:
            c.add("decode_errors", prep.n_decode_errors)
            ack = [d.entry_id for d in prep.dead if d.reason == "undecodable_entry"]
            self._dead_letter(key, prep.dead, ack, deliveries)
            self.limited.warning("decode", "Dead-lettered what did not decode.",
                                 sink=self.sink_name, stream=key, items=len(prep.dead),
                                 error=prep.dead[0].error)
        if prep.ack_only:
            self.r.xack(key, self.group, *prep.ack_only)
            c.add("entries_acked", len(prep.ack_only))
        if prep.groups:
            self._deliver(key, prep.groups, deliveries)

    def _deliver(self, key: str, groups: list[tuple[str, list[Record], Any]],
                 deliveries: dict[str, int] | None) -> None:
        max_d = self.config.max_deliveries
        if deliveries:
            over = [g for g in groups if deliveries.get(g[0], 1) - 1 >= max_d]
            if over:
                self._dead_letter_groups(key, over, "max_deliveries",
                                         f"delivered {max_d} times without success", deliveries)
                groups = [g for g in groups if deliveries.get(g[0], 1) - 1 < max_d]
                if not groups:
                    return
        records = groups[0][1] if len(groups) == 1 else [r for g in groups for r in g[1]]
        batch = Batch(records, stream=key, entry_ids=[g[0] for g in groups],
                      entry_sizes=[len(g[1]) for g in groups])
        try:
            self._write(batch)
        except PermanentError as exc:
            if len(groups) > 1:
                for g in groups:  # find the entry the sink rejects
                    self._deliver(key, [g], deliveries)
                return
            self._dead_letter_groups(key, groups, "permanent", str(exc), deliveries)
            return
        except WriteFailed as exc:
            if self.stopper.is_set():
                return  # left pending; redelivered on the next start
            if not self._sink_healthy():
                self._outage(key, groups, batch, deliveries)
                return
            due = []
            for g in groups:
                d = (deliveries or {}).get(g[0], 1)
                if d >= max_d:
                    self._dead_letter_groups(key, [g], "max_deliveries",
                                             f"delivered {d} times; last error: {exc.error}",
                                             deliveries)
                else:
                    due.append(d)
            if due:
                pause = self.policy.backoff(min(due))
                self.pending_due = min(self.pending_due, time.monotonic() + pause)
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

    def _sink_healthy(self) -> bool:
        try:
            self.sink.health_check(deadline=time.monotonic() + min(self.spec.timeout_s, 10.0))
            return True
        except Exception as exc:
            self.limited.warning("health", "Sink health check failed.",
                                 sink=self.sink_name, error=exc)
            return False

    def _outage(self, key: str, groups: list[tuple[str, list[Record], Any]], batch: Batch,
                deliveries: dict[str, int] | None) -> None:
        """Hold the batch until the sink is back (or we are told to stop)."""
        c = self.counters
        c.set("state", STATE_OUTAGE)
        log.warning("Sink is down; holding the batch until it is back.",
                    sink=self.sink_name, entries=len(groups))
        ids = [g[0] for g in groups]
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
                    self._deliver(key, groups, deliveries)
                    return
                except WriteFailed:
                    if self._sink_healthy():
                        c.set("state", STATE_RUNNING)
                        self._deliver(key, groups, deliveries)  # poison path now
                        return
                    continue
                self._acked(key, batch)
                log.info("Sink is back.", sink=self.sink_name)
                return
        finally:
            if c.get("state") == STATE_OUTAGE:
                c.set("state", STATE_RUNNING)

    # -- dead letters ----------------------------------------------------------
    def _dead_letter_groups(self, key: str, groups: list[tuple[str, list[Record], Any]],
                            reason: str, error: str, deliveries: dict[str, int] | None) -> None:
        items = [DeadItem(dict(g[2]), reason, error, g[0]) for g in groups]
        self._dead_letter(key, items, [g[0] for g in groups], deliveries)
        self.counters.add("records_dead_lettered", sum(len(g[1]) for g in groups))
        self.limited.warning("dead", "Dead-lettered entries.",
                             sink=self.sink_name, stream=key, entries=len(groups),
                             reason=reason, error=error)

    def _dead_letter(self, key: str, items: list[DeadItem], ack: list[str],
                     deliveries: dict[str, int] | None) -> None:
        """Write ``items`` to the dead-letter stream and ack ``ack``, in one MULTI."""
        dl_key = dead_letter_key(key, self.sink_name)
        pipe = self.r.pipeline(transaction=True)
        for it in items:
            fields = dict(it.fields)
            fields.update({
                "dl_sink": self.sink_name, "dl_reason": it.reason, "dl_error": it.error[:4000],
                "dl_stream": key, "dl_entry_id": it.entry_id,
                "dl_deliveries": str((deliveries or {}).get(it.entry_id, 1)),
            })
            pipe.xadd(dl_key, fields)
        if ack:
            pipe.xack(key, self.group, *ack)
        pipe.execute()
        if ack:
            self.counters.add("entries_acked", len(ack))
        undecodable_entries = sum(1 for it in items if it.reason == "undecodable_entry")
        records = sum(1 for it in items if it.reason == "undecodable_record")
        if undecodable_entries or records:
            self.counters.add("records_dead_lettered", undecodable_entries + records)


def worker_main(config: PumpConfig, sink_name: str, index: int, slot: Slot) -> None:
    """Entry point of a worker process (spawned by the supervisor)."""
    stopper = SignalStopper()
    setup_logging(config.log_format, config.log_level, proc=f"worker-{sink_name}-{index}")
    try:
        import_plugins(config.plugins)
        worker = Worker(config, sink_name, index, counters=slot, stopper=stopper)
        code = worker.run()
    except Exception as exc:
        log.exception("Worker failed.", sink=sink_name, error=repr(exc))
        code = 2
    sys.exit(code)
