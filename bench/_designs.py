"""The analytics designs the benchmarks compare, each behind the same tiny interface.

Every design has ``start()``, ``record(record: dict) -> bool`` (``True`` if
accepted, ``False`` if dropped) and ``stop()``, which returns only when
everything accepted has been sent (so CPU measured around a loop and
``stop()`` includes the background work). ``make(name, ...)`` builds one;
``count_in_redis(name, client)`` says how many records it has put into
Redis so far. Names (the numbering of ``bench compare``):

1. ``none``        no analytics: ``record`` returns ``True`` (the floor)
2. ``ours``        ``collector.Analytics.record_hit`` into this process's ring;
                   ``collector-daemon`` (another process, started by the
                   benchmark) moves the records into the Redis stream
3. ``sync_rpush``  one synchronous ``RPUSH`` of the msgpack record per call
4. ``seed_queue``  the seed's iam-authz-server analytics ported to Python:
                   a bounded ``queue.Queue`` (``records_buffer_size``),
                   ``pool_size`` worker threads that msgpack-encode, batch up
                   to ``records_buffer_size / pool_size`` records or
                   ``flush_interval_ms`` (forced at most every
                   ``max_flush_interval_ms``) and send a pipeline of one
                   ``RPUSH`` per record; ``record`` blocks while the queue is
                   full, as the seed's channel send does
5. ``otel_deque``  OpenTelemetry's batch processor shape: a bounded deque,
                   one background thread woken when a batch is ready or
                   every ``schedule_delay_ms``, sending batches of
                   ``max_export_batch_size`` as one multi-value ``RPUSH``;
                   ``record`` drops (returns ``False``) when the deque is full
6. ``mp_queue``    a bounded ``multiprocessing.Queue`` to a separate sender
                   process that msgpack-encodes and sends pipelined ``RPUSH``
                   batches; the app process pays the pickling (in the
                   queue's feeder thread) and the pipe writes

Designs 3-6 write to the Redis list ``bench:<name>``; ours to the stream
(``collector.common.stream``).
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import redis

DESIGNS = ("none", "ours", "sync_rpush", "seed_queue", "otel_deque", "mp_queue")


class Design(Protocol):
    name: str

    def start(self) -> None: ...

    def record(self, record: dict[str, Any]) -> bool: ...

    def stop(self) -> None: ...


def list_key(name: str) -> str:
    return f"bench:{name}"


def _client(redis_url: str | None) -> redis.Redis:
    if not redis_url:
        raise ValueError("this design writes to Redis: pass redis_url")
    return redis.Redis.from_url(redis_url, socket_timeout=30)


# 1 ---------------------------------------------------------------------------
class NoAnalytics:
    name = "none"

    def start(self) -> None:
        pass

    def record(self, record: dict[str, Any]) -> bool:
        return True

    def stop(self) -> None:
        pass


# 2 ---------------------------------------------------------------------------
class Ours:
    """``collector.Analytics``; ``record`` *is* ``record_hit`` (no wrapper call)."""

    name = "ours"

    def __init__(self, collector_config: Any = None, options: Any = None) -> None:
        from collector import Analytics

        if options is not None:
            self.analytics = Analytics(options)
        else:
            self.analytics = Analytics.from_config(collector_config)
        self.record: Callable[[dict[str, Any]], bool] = self.analytics.record_hit

    def start(self) -> None:
        self.analytics.start()

    def stop(self) -> None:
        # The ring is shared memory: once record_hit returned, the record is
        # out of the app's hands; the daemon's work is in its own processes.
        self.analytics.stop()


# 3 ---------------------------------------------------------------------------
class SyncRPush:
    name = "sync_rpush"

    def __init__(self, redis_url: str | None) -> None:
        self.client = _client(redis_url)
        self.key = list_key(self.name)
        self.pack = msgpack.Packer(use_bin_type=True).pack

    def start(self) -> None:
        self.client.ping()

    def record(self, record: dict[str, Any]) -> bool:
        try:
            self.client.rpush(self.key, self.pack(record))
            return True
        except redis.RedisError:
            return False

    def stop(self) -> None:
        self.client.close()


# 4 ---------------------------------------------------------------------------
class SeedQueue:
    """iam-authz-server's ``analytics.go`` in Python (see the module doc)."""

    name = "seed_queue"

    def __init__(self, redis_url: str | None, pool_size: int = 4,
                 records_buffer_size: int = 2000, flush_interval_ms: float = 200,
                 max_flush_interval_ms: float = 1000) -> None:
        self.redis_url = redis_url
        self.pool_size = pool_size
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(records_buffer_size)
        self.worker_buffer_size = max(1, records_buffer_size // pool_size)
        self.flush_interval_s = flush_interval_ms / 1000
        self.forced_s = max_flush_interval_ms / 1000
        self.key = list_key(self.name)
        self.threads: list[threading.Thread] = []
        self.should_stop = False
        self.errors = 0

    def start(self) -> None:
        self.should_stop = False
        for i in range(self.pool_size):
            t = threading.Thread(target=self._worker, name=f"seed-worker-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def record(self, record: dict[str, Any]) -> bool:
        if self.should_stop:
            return False
        self.queue.put(record)  # blocks while full, like the seed's channel send
        return True

    def _send(self, client: redis.Redis, buf: list[bytes]) -> None:
        pipe = client.pipeline(transaction=False)
        for item in buf:
            pipe.rpush(self.key, item)
        try:
            pipe.execute()
        except redis.RedisError:
            self.errors += 1

    def _worker(self) -> None:
        client = _client(self.redis_url)
        pack = msgpack.Packer(use_bin_type=True).pack
        buf: list[bytes] = []
        last_sent = time.monotonic()
        get = self.queue.get
        while True:
            ready = False
            try:
                rec = get(timeout=self.flush_interval_s)
            except queue.Empty:
                ready = True
            else:
                if rec is None:  # closed: send what is left and exit
                    if buf:
                        self._send(client, buf)
                    client.close()
                    return
                buf.append(pack(rec))
                ready = len(buf) >= self.worker_buffer_size
            if buf and (ready or time.monotonic() - last_sent >= self.forced_s):
                self._send(client, buf)
                buf = []
                last_sent = time.monotonic()

    def stop(self) -> None:
        self.should_stop = True
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()
        self.threads = []


# 5 ---------------------------------------------------------------------------
class OtelDeque:
    """OpenTelemetry ``BatchSpanProcessor``'s shape, exporting to Redis."""

    name = "otel_deque"

    def __init__(self, redis_url: str | None, max_queue_size: int = 2048,
                 max_export_batch_size: int = 512, schedule_delay_ms: float = 200) -> None:
        self.redis_url = redis_url
        self.max_queue_size = max_queue_size
        self.batch_size = max_export_batch_size
        self.delay_s = schedule_delay_ms / 1000
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.wake = threading.Event()
        self.done = False
        self.dropped = 0
        self.key = list_key(self.name)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.done = False
        self.thread = threading.Thread(target=self._worker, name="otel-exporter", daemon=True)
        self.thread.start()

    def record(self, record: dict[str, Any]) -> bool:
        q = self.queue
        if len(q) >= self.max_queue_size or self.done:
            self.dropped += 1
            return False
        q.append(record)
        if len(q) >= self.batch_size:
            self.wake.set()
        return True

    def _worker(self) -> None:
        client = _client(self.redis_url)
        pack = msgpack.Packer(use_bin_type=True).pack
        q = self.queue
        while True:
            self.wake.wait(self.delay_s)
            self.wake.clear()
            while q:
                n = min(len(q), self.batch_size)
                batch = [pack(q.popleft()) for _ in range(n)]
                try:
                    client.rpush(self.key, *batch)
                except redis.RedisError:
                    pass
                if not self.done and len(q) < self.batch_size:
                    break
            if self.done and not q:
                client.close()
                return

    def stop(self) -> None:
        self.done = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None


# 6 ---------------------------------------------------------------------------
def _mp_sender(q: Any, redis_url: str, key: str, batch_size: int) -> None:
    client = _client(redis_url)
    pack = msgpack.Packer(use_bin_type=True).pack
    while True:
        item = q.get()
        batch = [item]
        while len(batch) < batch_size:
            try:
                batch.append(q.get_nowait())
            except queue.Empty:
                break
        done = batch[-1] is None
        recs = [pack(r) for r in batch if r is not None]
        if recs:
            pipe = client.pipeline(transaction=False)
            for b in recs:
                pipe.rpush(key, b)
            pipe.execute()
        if done:
            client.close()
            return


class MpQueue:
    name = "mp_queue"

    def __init__(self, redis_url: str | None, maxsize: int = 10_000,
                 batch_size: int = 500) -> None:
        if not redis_url:
            raise ValueError("mp_queue writes to Redis: pass redis_url")
        self.redis_url = redis_url
        self.ctx = mp.get_context("spawn")
        self.maxsize = maxsize
        self.batch_size = batch_size
        self.q: Any = None
        self.proc: Any = None
        self.stopped = False

    def start(self) -> None:
        self.q = self.ctx.Queue(self.maxsize)
        self.proc = self.ctx.Process(target=_mp_sender, daemon=True,
                                     args=(self.q, self.redis_url, list_key(self.name),
                                           self.batch_size))
        self.proc.start()
        put = self.q.put

        def record(record: dict[str, Any]) -> bool:
            put(record)  # blocks while full; pickled by the queue's feeder thread
            return True

        self.record = record  # type: ignore[method-assign]

    def record(self, record: dict[str, Any]) -> bool:  # replaced in start()
        raise RuntimeError("call start() first")

    def stop(self) -> None:
        if self.q is None or self.stopped:
            return
        self.stopped = True
        self.q.put(None)
        self.q.close()
        self.q.join_thread()  # the feeder thread has written everything
        self.proc.join()


# -----------------------------------------------------------------------------
def make(name: str, *, redis_url: str | None = None, collector_config: Any = None,
         **options: Any) -> Any:
    """Build design ``name`` (see the module doc); ``options`` go to its constructor."""
    if name == "none":
        return NoAnalytics()
    if name == "ours":
        return Ours(collector_config, **options)
    if name == "sync_rpush":
        return SyncRPush(redis_url, **options)
    if name == "seed_queue":
        return SeedQueue(redis_url, **options)
    if name == "otel_deque":
        return OtelDeque(redis_url, **options)
    if name == "mp_queue":
        return MpQueue(redis_url, **options)
    raise ValueError(f"unknown design {name!r}; known: {', '.join(DESIGNS)}")


def count_in_redis(name: str, client: redis.Redis) -> int:
    """Records design ``name`` has put into Redis so far."""
    if name == "none":
        return 0
    if name == "ours":
        from collector.testing import stream_record_count

        return stream_record_count(client)
    return int(client.llen(list_key(name)))
