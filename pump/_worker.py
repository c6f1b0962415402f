"""One pump worker: a consumer of its sink's group, one process per worker.

Loop (``Worker.step``)::

    own pending entries due?  -> re-read them one entry at a time (XREADGROUP id)
    time to reclaim?          -> XAUTOCLAIM JUSTID entries idle > claim_idle_ms
    XREADGROUP >  (BLOCK read_block_s, COUNT read_count) over every shard
      -> decode (bad entry / record -> dead-letter stream, counted)
      -> filters -> omit detail -> max_record_bytes trim
      -> sink.write(batch, deadline) through the retry wrapper
      -> XACK only after the sink accepted

The parts: reading and claiming (``_reading.py``), preparing records
(``_pipeline.py``), delivering, outages and poison (``_delivery.py``, the
records at fault found by ``_isolate.py``, the entries in hand kept claimed by
``_claims.py``), dead letters (``_deadletter.py``),
stop requests (``_stop.py``). This
module owns the worker's life cycle: opening the sink, the loop, Redis
trouble, shutdown.

Consumer names are ``<instance>:<sink>:<index>`` (``instance_name``, by
default ``<host name>-<health port>``: stable across restarts, unique per
pump instance on a host), so a restarted worker finds its own pending
entries at once, any number of pump instances on any number of hosts share
each sink's group, and the entries of a consumer that never returns (a
dead instance) are claimed by the others after ``claim_idle_ms``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import time
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from collector.common.counters import Slot
from collector.common.log import RateLimited, get_logger
from collector.common.log import setup as setup_logging
from collector.common.private import NotPrivate, private_directory

from ._delivery import Delivery
from ._metrics import STATE_RUNNING, STATE_STARTING, STATE_STOPPING, WORKER_COUNTERS
from ._reading import EntryReader
from ._redis import connect, ensure_groups
from ._retry import RetryPolicy
from ._spool import Spool, spool_directory
from ._spooler import Spooler, SpoolFeeder
from ._stop import SignalStopper, Stopper
from .config import PumpConfig, import_plugins
from .sinks import PermanentError, Sink, build_sink

log = get_logger(__name__)

__all__ = ["SignalStopper", "Stopper", "Worker", "consumer_name", "worker_main"]


def consumer_name(config: PumpConfig, sink: str, index: int) -> str:
    """The consumer name of worker ``index`` of ``sink`` in this pump instance."""
    return f"{config.instance()}:{sink}:{index}"


class Worker:
    """A consumer of one sink's group. ``run()`` until stopped; ``step()`` is one turn."""

    def __init__(self, config: PumpConfig, sink_name: str, index: int = 0, *,
                 counters: Slot | None = None, stopper: Stopper | None = None,
                 sink: Sink | None = None, r: redis.Redis | None = None,
                 consumer: str | None = None, outage_reason: Any = None) -> None:
        self.config = config
        self.sink_name = sink_name
        self.spec = config.pumps[sink_name]
        self.group = sink_name
        self.consumer = consumer or consumer_name(config, sink_name, index)
        self.keys = config.shard_keys()
        self.counters = counters or WORKER_COUNTERS.local_slot()
        self.stopper = stopper or Stopper()
        self.sink = sink if sink is not None else build_sink(
            config.sink_type(sink_name), self.spec.meta)
        self.r = r if r is not None else connect(config, block_s=config.read_block_s)
        self.policy = RetryPolicy(self.spec.timeout_s, config.retry_initial_ms / 1000,
                                  config.retry_max_ms / 1000)
        self.parent_pid = os.getppid()
        self.limited = RateLimited(10.0, log)
        self.redis_failures = 0
        self.outage_reason = outage_reason  # a shared char array the supervisor reads
        self.delivery = Delivery(
            config=config, spec=self.spec, sink_name=sink_name, sink=self.sink, r=self.r,
            consumer=self.consumer, counters=self.counters, stopper=self.stopper,
            policy=self.policy, limited=self.limited, retry_at=self._retry_at,
            on_outage=self._outage_reason)
        self.reading_since: float | None = None  # in a turn on the stream since (monotonic)
        self.reader = EntryReader(self.r, config, self.group, self.consumer, self.stopper,
                                  self.delivery.handle, self.delivery.claims)
        self.index = index
        self.spool: Spool | None = None
        self.spooler: Spooler | None = None
        self.feeder: SpoolFeeder | None = None

    def open_spool(self) -> None:
        """The sink's spool and its spooler thread (``pump/_spooler.py``)."""
        private_directory(self.config.spool_dir, "spool_dir")
        self.spool = Spool(spool_directory(self.config.spool_dir, self.consumer),
                           self.spec.spool_max_bytes, self.spec.overflow)
        if len(self.spool):
            log.info("The spool holds entries; the sink gets them first.", sink=self.sink_name,
                     entries=len(self.spool), records=self.spool.records())
        self.spooler = Spooler(self.config, self.sink_name, self.consumer, self.spool,
                               self.counters, self.stopper, busy_s=self.busy_s).start()
        self.delivery.spooling = self.spooler.moving  # a held batch it takes is let go
        self.feeder = SpoolFeeder(self.spool, self.delivery, self.counters, self.stopper,
                                  self.config.read_count, self._outage_reason)

    def busy_s(self) -> float | None:
        """Seconds this worker has been in its turn on the stream (reading, delivering,
        acknowledging a batch), None between turns: what the spooler may claim."""
        since = self.reading_since
        return None if since is None else time.monotonic() - since

    def _retry_at(self, when: float) -> None:
        self.reader.pending_at(when)

    def _outage_reason(self, reason: str | None) -> None:
        """Publish why the sink is down (None: it is not) for the supervisor's /readyz."""
        if self.outage_reason is not None:
            self.outage_reason.value = (reason or "").encode("utf-8", "replace")[
                :len(self.outage_reason) - 1]

    # -- life cycle --------------------------------------------------------
    def run(self) -> int:
        c = self.counters
        c.set("pid", os.getpid())
        c.set("state", STATE_STARTING)
        log.info("Worker starting.", sink=self.sink_name, consumer=self.consumer)
        if self.spec.spool_max_bytes > 0:
            try:
                self.open_spool()  # before the sink: a sink down at start spools too
            except (NotPrivate, OSError, RuntimeError) as exc:
                log.error("The spool cannot be used.", sink=self.sink_name, error=str(exc))
                return 2
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
            except (redis.RedisError, RedisClusterException) as exc:
                self._redis_trouble(exc)  # a cluster's pipeline may raise the latter
        c.set("state", STATE_STOPPING)
        if self.spooler is not None and self.spooler.thread is not None:
            self.spooler.thread.join(self.config.redis_timeout_s + 1)  # mid-batch: it finishes
        left = self._time_left_for_shutdown()
        try:
            self.sink.close(left)
        except Exception as exc:
            log.warning("Closing the sink failed.", sink=self.sink_name, error=exc)
        log.info("Worker stopped.", sink=self.sink_name, consumer=self.consumer)
        return 0

    def step(self) -> int:
        """Read and deliver one round; returns the number of entries handled.

        From the spool while it holds entries or the spooler moves some (stream order),
        else from the stream."""
        if self.feeder is not None and self.spooler is not None and (
                len(self.feeder.spool) or self.spooler.moving()):
            self.delivery.claims.clear()  # the spool's entries are no longer pending
            return self.feeder.step()
        self.reading_since = time.monotonic()  # from before the read: no batch unaccounted
        try:
            return self.reader.step()
        finally:
            self.reading_since = None

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

    def _redis_trouble(self, exc: redis.RedisError | RedisClusterException) -> None:
        self.redis_failures += 1
        self.reader.pending_now()  # an ack may have been lost: look at our pending again
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


#: The cyclic collector's first threshold in a worker. A batch makes thousands of
#: short-lived containers (a dict and a Record per record) that reference counting
#: frees; with the default (700) the collector scanned them ~7 times a batch, about
#: 14% of the pipeline's instructions (callgrind; bench/pump.py).
GC_THRESHOLD = 50_000
#: glibc ``mallopt``: keep up to ``MALLOC_TRIM_BYTES`` of freed heap instead of
#: giving it back to the kernel (``M_TRIM_THRESHOLD``; ``M_TOP_PAD`` grows the heap
#: in larger steps), and serve allocations below 32 MiB (glibc's most) from the
#: heap, not ``mmap`` (``M_MMAP_THRESHOLD``). A batch allocates and frees megabytes
#: (decoded fields, encoded lines); by default each batch's memory came fresh from
#: the kernel, about two page faults a record once the sink keeps its encoded
#: records (decode + orjson 6.8 -> 2.0 us a record, bench/_pump_floor.py). A
#: worker's memory then stays at its largest batch's.
MALLOC_TRIM_BYTES = 256 << 20
_MALLOPT = ((-1, MALLOC_TRIM_BYTES), (-2, 64 << 20), (-3, 32 << 20))  # trim, top pad, mmap


def tune_process() -> None:
    """A worker's memory settings (above): freeze what start-up made (never garbage),
    collect young objects rarely, keep freed heap for the next batch (glibc only)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: its defaults
        return
    for option, value in _MALLOPT:
        mallopt(option, value)


def worker_main(config: PumpConfig, sink_name: str, index: int, slot: Slot,
                outage_reason: Any = None) -> None:
    """Entry point of a worker process (spawned by the supervisor)."""
    stopper = SignalStopper()
    setup_logging(config.log_format, config.log_level, proc=f"worker-{sink_name}-{index}")
    try:
        import_plugins(config.plugins)
        worker = Worker(config, sink_name, index, counters=slot, stopper=stopper,
                        outage_reason=outage_reason)
        tune_process()
        code = worker.run()
    except Exception as exc:
        log.exception("Worker failed.", sink=sink_name, error=repr(exc))
        code = 2
    sys.exit(code)
