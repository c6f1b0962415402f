"""A flusher process: drains the rings it was given into Redis.

For each ring it reads records (raw msgpack bytes, never decoded: read out
of the ring already packed as the elements of the entry's msgpack array,
one byte string per read, ``ringbuf.RingReader.read_packed``) into a
pending batch until the batch holds ``batch_size`` records or
``batch_bytes`` bytes, or its first record is ``flush_interval_ms`` old
(capped by the forced maximum ``max_flush_interval_ms``), or the ring is
half full, or its producer has closed it, whichever comes first, so a steady
trickle waits at most ``flush_interval_ms``, a ring smaller than two batches
never stalls its producer, and an exiting worker's last records go at once.
It then writes the batch as ONE stream entry (``collector.common.stream``) in one
round trip (``XADD`` pipelined with ``XLEN`` of the same shard) and only
after Redis accepted it commits the ring, which frees the records for the
producer. A crash before the commit re-reads the batch on the next start:
at most that batch is duplicated (with the same record ids), nothing is lost.

Waking up costs more than reading (about 50 µs of CPU per sleep on a
virtual machine, more than reading a few hundred records), so the flusher
sleeps as long as it safely can: one wake-up per batch under a steady load.
An empty ring is looked at every ``IDLE_S`` (20 ms; at most half of
``flush_interval_ms``; sooner for a small ring, see the last point). A ring
with a partial batch is looked at again at the earliest of

* the batch's due time: ``flush_interval_ms`` after the ring was last read
  with nothing left behind (records are counted old from then, so none
  waits longer than ``flush_interval_ms``, however long the flusher slept);
* when, at the ring's measured arrival rate, it will hold ``batch_size``
  records or ``batch_bytes`` bytes, or be half full (a pending batch's
  records stay in the ring until Redis has them);
* the time a burst of ``BURST_BYTES_PER_S`` would take to fill half the
  ring (64 ms for an 8 MiB ring).

After a send the ring is looked at again at once only if the batch was full,
the ring is half full or closed, or the daemon stops; else as a partial
batch counted old from the read before the send: one wake-up per batch of
a trickle, not three.

With ``min_replicas_acked: N`` the round trip ends with ``WAIT N
replica_ack_timeout_ms`` and the ring is committed only if N replicas have
the batch; otherwise it stays pending and is sent again (the stream may hold
it twice, with the same record ids), so a master's failover loses nothing
that was committed. On a Redis Cluster the flusher writes to the master of
each shard's slot (``_xadd.StreamWriter``).

When Redis fails, the batch stays pending (its records stay in the ring),
the flusher backs off (``retry_initial_ms`` doubling to ``retry_max_ms``,
jittered) and reports ``redis_ok = 0``. When a shard holds its share of
``max_backlog_bytes`` or more (``_budget.py``: measured from the entries
written, checked against Redis's ``MEMORY USAGE``), the flusher pushes back:
it keeps the data in the rings and looks again every ``BACKLOG_RECHECK_S``.
It never trims a stream.

Each ring is locked by the flusher that serves it (its consumer lock,
:mod:`._served`), so two consumers can never serve one ring. Before a
ring's mapping is touched for a batch, its file is checked (still the file
at its path, still its full size): a ring that shrank or was replaced is
dropped and reported (:class:`BadKind.CHANGED`), and the supervisor
quarantines it. While a flusher touches a ring's mapping, its
``ring_in_use`` gauge names the ring (:attr:`Assign.no`), so if the mapping
faults anyway (a truncation between the check and the read: ``SIGBUS``)
the supervisor knows which ring killed it.

The supervisor's commands (:class:`Assign`, :class:`Release`, :class:`Stop`)
arrive on the pipe; a ring the flusher cannot serve goes back on it as a
:class:`BadRing` report (:mod:`._messages`).
"""

from __future__ import annotations

import os
import random
import select
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

import redis

import ringbuf
from collector.common import redisconn
from collector.common.log import RateLimited, get_logger
from collector.common.log import setup as setup_logging
from collector.common.stream import encode_packed_entry
from collector.config import CollectorConfig

from ._budget import BACKLOG_RECHECK_S, StreamBudget, entry_bytes
from ._messages import Assign, BadKind, BadRing, Release, Stop
from ._served import RingGone, ServedRing, Unservable
from ._xadd import NotReplicated, StreamWriter

_log = get_logger(__name__)

IDLE_S = 0.02  # an empty ring is looked at this often (at most every flush_interval / 2)
INF = float("inf")


class Flusher:
    def __init__(self, slot: int, cfg: CollectorConfig, pipe: Connection, counters: Any,
                 parent_pid: int) -> None:
        self.slot = slot
        self.cfg = cfg
        self.pipe = pipe  # to and from the supervisor
        self.counters = counters
        self.parent_pid = parent_pid
        self.rings: dict[str, ServedRing] = {}
        self.keys = cfg.shard_keys()
        # No CLIENT SETNAME: an ACL user limited to streams (+@stream +ping) must work.
        self.client = redisconn.connect_from_config(cfg)
        # its connections (one per master of a cluster) and the XADD round trip
        self.writer = StreamWriter(self.client, replicas=cfg.min_replicas_acked,
                                   timeout_ms=cfg.replica_ack_timeout_ms)
        self.batch_size = cfg.batch_size
        self.batch_bytes = cfg.batch_bytes
        self.flush_s = cfg.flush_interval_ms / 1000.0
        self.max_flush_s = cfg.max_flush_interval_ms / 1000.0
        self.due_s = min(self.flush_s, self.max_flush_s)
        self.idle_s = min(IDLE_S, self.due_s / 2)
        self.retry_initial = cfg.retry_initial_ms / 1000.0
        self.retry_max = max(cfg.retry_max_ms / 1000.0, self.retry_initial)
        self.backoff = self.retry_initial
        self.retry_at = 0.0
        self.failing_since: float | None = None
        self.fail_count = 0
        self.budget = StreamBudget(self.client, cfg.max_backlog_bytes, cfg.stream_shards,
                                   cfg.max_backlog_entries, self._failed, self._succeeded)
        self.stop_deadline: float | None = None
        self.limiter = RateLimited(10.0)
        self.counters.set("redis_ok", 1.0)
        # One poll object for the command pipe: Connection.poll(timeout) builds a
        # selector per call, which costs more than the rest of an idle loop.
        self.poller = select.poll()
        self.poller.register(pipe.fileno(), select.POLLIN)

    # -- commands -------------------------------------------------------------
    def _poll_commands(self, timeout: float) -> None:
        pipe = self.pipe
        try:
            if not self.poller.poll(max(0, int(timeout * 1000 + 0.999))):  # ms, rounded up
                return
            while True:
                match pipe.recv():
                    case Assign(path, no):
                        if path not in self.rings:
                            self.rings[path] = ServedRing(path, no)
                    case Release(path):
                        ring = self.rings.pop(path, None)
                        if ring is not None:
                            ring.close()
                    case Stop(deadline):
                        self.stop_deadline = deadline
                if not pipe.poll(0):
                    return
        except (EOFError, OSError):
            # The supervisor is gone: stop at once; uncommitted data stays in the rings.
            self.stop_deadline = 0.0

    # -- rings ----------------------------------------------------------------------
    def _open(self, ring: ServedRing, now: float) -> bool:
        try:
            return ring.open(now, self.keys)
        except RingGone:
            self.rings.pop(ring.path, None)
        except Unservable as exc:
            self._drop(ring, exc.report)
        return False

    def _intact(self, ring: ServedRing) -> bool:
        """True if the open ring's file may be read (else it is dropped, reported if bad)."""
        try:
            report = ring.problem()
        except RingGone:
            ring.close()
            self.rings.pop(ring.path, None)
            return False
        if report is None:
            return True
        _log.error("A ring's file changed under its flusher; dropping it.", ring=ring.path,
                   why=report.message)
        self._drop(ring, report)
        return False

    def _drop(self, ring: ServedRing, report: BadRing) -> None:
        """Let go of a ring this flusher cannot serve and tell the supervisor why."""
        ring.close()
        self.rings.pop(ring.path, None)
        try:
            self.pipe.send(report)
        except (OSError, ValueError):
            pass

    # -- Redis --------------------------------------------------------------------
    def _failed(self, exc: BaseException, what: str) -> None:
        now = time.monotonic()
        self.counters.add("redis_errors")
        self.counters.set("redis_ok", 0.0)
        if self.failing_since is None:
            self.failing_since = now
        self.fail_count += 1
        held = self.limiter.hit("redis")
        if held is not None:
            _log.warning("Redis round trip failed; records stay in the rings and will be retried.",
                         what=what, url=self.cfg.redacted_redis_url(),
                         error=repr(exc), failures=self.fail_count, suppressed=held,
                         retry_in_s=round(self.backoff, 3))
        self.retry_at = now + self.backoff * random.uniform(0.5, 1.0)
        self.backoff = min(self.backoff * 2, self.retry_max)

    def _succeeded(self) -> None:
        if self.failing_since is not None:
            _log.info("Redis round trips succeed again.", failures=self.fail_count,
                      down_s=round(time.monotonic() - self.failing_since, 3))
            self.limiter.reset("redis")
            self.failing_since = None
            self.fail_count = 0
        self.counters.set("redis_ok", 1.0)
        self.backoff = self.retry_initial

    def _round_trip(self, key: bytes, fields: dict[str, bytes | list[bytes]]) -> int:
        return self.writer.send(key, fields)

    def _send(self, ring: ServedRing) -> bool:
        reader = ring.reader
        assert reader is not None
        n = ring.pending_n
        fields = encode_packed_entry(reader.ring_id, ring.first_seq, n, ring.pending)
        t0 = time.monotonic()
        try:
            length = self._round_trip(ring.key_bytes, fields)
        except NotReplicated as exc:
            # The master has it, too few replicas do: keep it in the ring, send it again.
            self.counters.add("replica_ack_failures")
            self._failed(exc, "WAIT")
            return False
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, "XADD")
            return False
        # Redis has the batch: only now free the records in the ring.
        reader.commit()
        now = time.monotonic()
        counters = self.counters
        counters.add("records_written", n)
        counters.add("batches_written")
        counters.add("written_bytes", ring.pending_bytes)
        counters.observe("flush_seconds", now - t0)
        self.budget.wrote(ring.key, length, entry_bytes(fields), now)
        ring.pending = []
        ring.pending_n = 0
        ring.pending_bytes = 0
        self._succeeded()
        return True

    # -- the loop ---------------------------------------------------------------------
    def _service(self, ring: ServedRing, now: float, stopping: bool) -> tuple[int, float]:
        """Read and maybe send one ring: (0 idle | 1 read | 2 sent, next wake-up time)."""
        reader = ring.reader
        assert reader is not None
        state = 0
        pending = ring.pending
        if (ring.corrupt is None and ring.pending_n < self.batch_size
                and ring.pending_bytes < self.batch_bytes):
            try:
                batch = reader.read_packed(self.batch_size - ring.pending_n,
                                           self.batch_bytes - ring.pending_bytes)
            except ringbuf.RingCorrupted as exc:
                ring.corrupt = str(exc)
                batch = None
            if batch:
                if not pending:
                    ring.first_seq = batch.first_seq
                    # These records arrived after the ring was last read empty
                    # (or after the last full read): count their age from then.
                    ring.first_at = ring.checked_at or now
                pending.extend(batch.parts)
                ring.pending_n += batch.n
                ring.pending_bytes += batch.nbytes
                self.counters.add("records_read", batch.n)
                ring.observe(now, batch.n, batch.nbytes)
                state = 1
            else:
                ring.observe(now, 0, 0)
            ring.checked_at = now
        if not pending:
            if ring.corrupt is not None:
                self._drop(ring, BadRing(ring.path, BadKind.CORRUPTED, ring.corrupt))
                return state, INF
            return state, ring.next_look(now, now + self.idle_s, self.batch_size, self.batch_bytes)
        # A ring half full goes now, whatever the batch limits: a small ring must
        # never make its producer wait (or drop) for a batch that cannot fill.
        # A closed ring's batch cannot grow any more: it goes now too.
        due = (ring.pending_n >= self.batch_size or ring.pending_bytes >= self.batch_bytes
               or stopping
               or ring.corrupt is not None or 2 * reader.used_bytes() >= reader.capacity
               or reader.producer_closed())
        if not due:
            wake = ring.first_at + self.due_s
            if now < wake:
                return state, ring.next_look(now, wake, self.batch_size, self.batch_bytes)
        if now < self.retry_at:
            return state, self.retry_at
        if self.budget.over(ring.key, now):
            self.counters.add("backpressure")
            retry = self.retry_at if self.retry_at > now else INF
            return state, min(now + BACKLOG_RECHECK_S, retry)
        full = ring.pending_n >= self.batch_size or ring.pending_bytes >= self.batch_bytes
        if self._send(ring):
            # A full batch: more may be waiting, look again at once; else the records
            # arriving now count old from the read before the send (``checked_at``)
            if (full or stopping or reader.producer_closed()
                    or 2 * reader.used_bytes() >= reader.capacity):
                return 2, now
            return 2, ring.next_look(now, ring.checked_at + self.due_s, self.batch_size,
                                     self.batch_bytes)
        return state, self.retry_at

    def _drained(self) -> bool:
        counters = self.counters
        try:
            for ring in list(self.rings.values()):
                if ring.reader is None:
                    continue
                counters.set("ring_in_use", ring.no)
                if not self._intact(ring):
                    continue
                if ring.pending or ring.reader.available_bytes() > 0:
                    return False
            return True
        finally:
            counters.set("ring_in_use", 0)

    def run(self) -> int:
        counters = self.counters
        while True:
            now = time.monotonic()
            counters.set("heartbeat", now)
            if os.getppid() != self.parent_pid:
                _log.warning("The supervisor is gone; exiting, uncommitted records stay in "
                             "the rings.")
                return 1
            stopping = self.stop_deadline is not None
            if stopping:
                if now >= self.stop_deadline or self._drained():  # type: ignore[operator]
                    return self._finish()
            # no ring: wait for a command (the pipe wakes the poll at once)
            wake = now + self.due_s
            for ring in list(self.rings.values()):
                counters.set("ring_in_use", ring.no)
                if ring.reader is None:
                    if not self._open(ring, now):
                        if ring.path in self.rings:
                            wake = min(wake, ring.next_try)
                        continue
                elif not self._intact(ring):
                    continue
                _state, w = self._service(ring, now, stopping)
                if w < wake:
                    wake = w
            counters.set("ring_in_use", 0)
            counters.set("rings", len(self.rings))
            # sleep until the earliest ring's next look (at once after a full batch:
            # more may be waiting), retry or lock attempt
            timeout = max(0.0, wake - time.monotonic())
            if stopping:
                timeout = min(timeout, max(0.0, self.stop_deadline - time.monotonic()))  # type: ignore[operator]
            self._poll_commands(timeout)

    def _finish(self) -> int:
        left = 0
        for ring in list(self.rings.values()):
            self.counters.set("ring_in_use", ring.no)
            if ring.reader is not None and self._intact(ring):
                left += ring.reader.available_bytes() + ring.pending_bytes
            ring.close()
        self.counters.set("ring_in_use", 0)
        if left:
            _log.warning("Stopping with records left in the rings; the next start sends them.",
                         bytes_left=left)
        else:
            _log.debug("Flusher drained every ring.")
        self.rings.clear()
        return 0


def flusher_main(slot: int, cfg: CollectorConfig, pipe: Connection, counters: Any,
                 parent_pid: int, rings: list[tuple[str, int]]) -> None:
    """Entry point of a flusher process (spawned by the supervisor)."""
    # The supervisor owns shutdown: a Ctrl-C or a SIGTERM to the whole process
    # group must not stop a flusher between XADD and commit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(cfg.log_format, cfg.log_level, proc=f"flusher-{slot}")
    flusher = Flusher(slot, cfg, pipe, counters, parent_pid)
    for path, no in rings:
        flusher.rings[path] = ServedRing(path, no)
    code = flusher.run()
    try:
        pipe.close()
    except OSError:
        pass
    raise SystemExit(code)
