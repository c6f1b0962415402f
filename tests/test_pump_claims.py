"""A worker keeps the entries it works on claimed, however long it works on them.

Two live workers of one sink's group (two consumers, each its own Redis
connection and sink, each stepping in its own thread) against a real
redis-server. Worker A reads every entry; its work on them takes longer than
``claim_idle_ms`` in all, though every write stays within ``batch_deadline_s``:

- isolating a batch record by record (two poison records among 16): many part
  writes one after the other;
- one batch over four shards: one write per shard one after the other.

Worker B claims what it finds idle past ``claim_idle_ms``. Every record is
counted by id over both sinks (and the dead letters): nothing lost, nothing
unexpected, and no record written twice, since neither worker died.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from collector.common.stream import encode_entry
from collector.testing import RedisServer, account, wait_until
from pump._metrics import WORKER_COUNTERS
from pump._redis import ensure_groups, group_lag
from pump._worker import Stopper, Worker
from pump.config import load_config

from .pump_plugins import make_record

KEY = "collector:analytics"
RING = "c" * 32


def rid(seq: int, ring: str = RING) -> str:
    return f"{ring}:{seq}"


def _config(redis_server: RedisServer, *, delay_s: float, deadline_s: float,
            claim_idle_ms: int, **extra: Any) -> Any:
    return load_config({
        "redis_url": redis_server.url, "read_block_s": 0.05, "read_count": 50,
        "retry_initial_ms": 5, "retry_max_ms": 20, "batch_deadline_s": deadline_s,
        "claim_idle_ms": claim_idle_ms,
        "pumps": {"m": {"type": "memory", "timeout_s": deadline_s,
                        "meta": {"key": "claims", "delay_s": delay_s,
                                 "poison_field": "poison", "poison_mode": "permanent"}}},
        **extra}, environ={})


class Running:
    """Workers stepping in threads until stopped; what they raised is kept."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, w: Worker) -> None:
        def loop() -> None:
            try:
                while not self.stop.is_set():
                    w.step()
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)

        t = threading.Thread(target=loop, name=f"worker-{w.consumer}", daemon=True)
        self.threads.append(t)
        t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads)


def _two_workers(cfg: Any, r: Any, keys: list[str]) -> tuple[Worker, Worker]:
    a, b = (Worker(cfg, "m", i, counters=WORKER_COUNTERS.local_slot(), stopper=Stopper())
            for i in (0, 1))
    for w in (a, b):
        w.sink.open()
    for key in keys:
        ensure_groups(r, [key], "m")
    return a, b


def _pending_of(r: Any, keys: list[str], consumer: str) -> int:
    return sum(len(r.xpending_range(k, "m", "-", "+", 1000, consumername=consumer))
               for k in keys)


def _run(r: Any, a: Worker, b: Worker, keys: list[str], n_entries: int) -> None:
    """A reads everything first; then B runs beside it until the group is done."""
    run = Running()
    try:
        run.start(a)
        wait_until(lambda: _pending_of(r, keys, a.consumer) == n_entries, 30,
                   "worker A to read every entry")
        run.start(b)
        wait_until(lambda: run.errors or all(group_lag(r, k, "m") == (0, 0) for k in keys),
                   120, "the group to deliver everything")
    finally:
        run.join()
    assert run.errors == []


def _written(*workers: Worker) -> Counter[str]:
    return Counter(rec.id for w in workers for rec in w.sink.records)  # type: ignore[attr-defined]


def _dead_ids(r: Any) -> Counter[str]:
    return Counter(f[b"dl_record_id"].decode() for _, f in r.xrange(f"{KEY}:dead:m"))


def test_isolating_a_batch_keeps_its_entries_claimed(redis_server: RedisServer) -> None:
    """16 single-record entries, records 5 and 12 poison (a permanent error naming no
    record): some 16 writes of 0.3 s each, 4.8 s in all, against claim_idle_ms 1.5 s."""
    r = redis_server.client()
    cfg = _config(redis_server, delay_s=0.3, deadline_s=0.4, claim_idle_ms=1500)
    a, b = _two_workers(cfg, r, [KEY])
    poison = {5, 12}
    for s in range(16):
        r.xadd(KEY, encode_entry(RING, s, [make_record(s, poison=s in poison)]))
    _run(r, a, b, [KEY], 16)
    good = [rid(s) for s in range(16) if s not in poison]
    got = account(_written(a, b), good)
    dead = account(_dead_ids(r), [rid(s) for s in poison])
    print(f"\nisolation, two live workers: written {got}; dead-lettered {dead}; "
          f"sink writes A {a.sink.writes} B {b.sink.writes}")  # type: ignore[attr-defined]
    assert (got.lost, got.unexpected, got.duplicated) == (0, 0, 0)
    assert (dead.lost, dead.unexpected, dead.duplicated) == (0, 0, 0)
    assert a.delivery.claims.refreshes > 0  # A kept them (16 writes of >= 0.3 s each)


def test_a_batch_over_several_shards_keeps_the_later_shards_claimed(
        redis_server: RedisServer) -> None:
    """One read takes entries of four shards; each shard's write takes 0.7 s (within
    batch_deadline_s 1 s), the fourth ends 2.8 s after the read: claim_idle_ms 1.5 s."""
    r = redis_server.client()
    cfg = _config(redis_server, delay_s=0.7, deadline_s=1.0, claim_idle_ms=1500,
                  stream_shards=4)
    keys = cfg.shard_keys()
    a, b = _two_workers(cfg, r, keys)
    expected = []
    for i, key in enumerate(keys):
        ring = str(i) * 32
        for s in range(2):
            r.xadd(key, encode_entry(ring, s, [make_record(s)]))
            expected.append(rid(s, ring))
    _run(r, a, b, keys, len(expected))
    got = account(_written(a, b), expected)
    print(f"\nfour shards, two live workers: written {got}; "
          f"sink writes A {a.sink.writes} B {b.sink.writes}")  # type: ignore[attr-defined]
    assert (got.lost, got.unexpected, got.duplicated) == (0, 0, 0)
    assert a.delivery.claims.refreshes > 0  # A kept the later shards (writes >= 0.7 s each)


def test_a_write_soon_after_its_read_claims_nothing_again(redis_server: RedisServer) -> None:
    """The defaults (claim_idle_ms 120 s, batch_deadline_s 60 s): entries are claimed again
    only once they have been in hand 30 s, so a quick delivery makes no XCLAIM."""
    r = redis_server.client()
    cfg = load_config({"redis_url": redis_server.url, "read_block_s": 0.05, "stream_shards": 3,
                       "pumps": {"m": {"type": "memory", "meta": {"key": "quick"}}}},
                      environ={})
    keys = cfg.shard_keys()
    w = Worker(cfg, "m", counters=WORKER_COUNTERS.local_slot(), stopper=Stopper())
    w.sink.open()
    ensure_groups(r, keys, "m")
    expected = []
    for i, key in enumerate(keys):
        ring = str(i) * 32
        for s in range(10):
            r.xadd(key, encode_entry(ring, s * 10, [make_record(s * 10 + j) for j in range(10)]))
            expected += [rid(s * 10 + j, ring) for j in range(10)]

    def turn() -> bool:
        w.step()
        return all(group_lag(r, k, "m") == (0, 0) for k in keys)

    wait_until(turn, 30, "the worker to deliver everything", interval=0)
    got = account(_written(w), expected)
    assert got.ok, got
    assert w.delivery.claims.refreshes == 0 and w.delivery.claims.held == {}
