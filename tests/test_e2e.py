"""End to end: producers -> collector-daemon -> Redis stream -> collector-pump -> sinks.

Every part is real and runs as its own process: a ``redis-server`` (the
``redis_server`` fixture, given to daemon and pump as ``redis_url``),
``collector-daemon --config``, ``collector-pump --config`` (supervisor plus
spawned workers), producer processes recording through
``collector.Analytics`` configured by the daemon's YAML (``full_policy:
block``, so nothing is dropped by policy; drops are counted and must be 0),
and the sinks' targets: a JSON Lines file, the machine's PostgreSQL (a table
per test, dropped at the end) and, for the outage test, a local HTTP server.

Each record carries ``producer`` and ``seq`` (``collector.testing.authz_record``);
each test counts the records in every sink by ``(producer, seq)``, checks
their contents, and prints and asserts lost and duplicated ones.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.testing import (
    Daemon,
    HttpPeer,
    Producers,
    Pump,
    RedisServer,
    account,
    authz_record,
    drop_tables,
    free_port,
    jsonl_lines,
    jsonl_records,
    pg_dsn,
    producer_ids,
    record_key,
    wait_until,
)
from pump._redis import group_lag

psycopg = pytest.importorskip("psycopg")

KEY = "collector:analytics"
Seen = Counter[tuple[int, int]]
PACE = (25, 0.02)  # at most ~1,250 records/s per producer: 10,000 records take ~8 s


class Stack:
    """Daemon, pump, producers and sink targets of one test; ``close()`` ends them all."""

    def __init__(self, tmp: Path, redis_server: RedisServer) -> None:
        self.tmp = tmp
        self.redis = redis_server
        self.r = redis_server.client()
        self.rings = tmp / "rings"
        self.rings.mkdir(mode=0o700)
        self.daemon = Daemon.write(tmp, redis_server.url, full_policy="block",
                                   block_timeout_ms=60_000, ring_capacity_bytes=8 << 20)
        self.collector_yaml = self.daemon.config
        self.pump: Pump | None = None
        self.producers: Producers | None = None
        self.http: HttpPeer | None = None
        self.http_seen: Seen = Counter()
        self.table = f"e2e_{os.getpid()}_{free_port()}"
        self.file = tmp / "out" / "analytics.jsonl"
        drop_tables(self.table)

    def write_pump(self, sinks: dict[str, Any], **extra: Any) -> Pump:
        """The pump of this stack, not started (``self.pump``)."""
        self.pump = Pump.write(self.tmp, self.redis.url, sinks, **{
            "read_count": 10, "retry_max_ms": 300, "trim_interval_s": 1, **extra})
        return self.pump

    def start_pump(self, sinks: dict[str, Any], **extra: Any) -> Pump:
        return self.write_pump(sinks, **extra).start()

    def start_producers(self, n: int, count: int,
                        pace: tuple[int, float] | None = None) -> Producers:
        """Producers recording through ``collector.Analytics`` (block policy).

        ``pace`` only stretches the load over a few seconds so that faults land
        while producers are still sending; no test waits on it.
        """
        self.producers = Producers.analytics(self.collector_yaml, n, count, pace=pace).start()
        return self.producers

    def start_http(self) -> HttpPeer:
        """The http sink's target, counting the (producer, seq) it accepted."""
        self.http = HttpPeer(on_items=lambda items: self.http_seen.update(
            record_key(item["record"]) for item in items)).start()
        return self.http

    def file_sink(self) -> dict[str, Any]:
        return {"type": "file", "workers": 1,
                "meta": {"path": str(self.file), "format": "jsonl", "fsync": "batch"}}

    def pg_sink(self, workers: int = 2) -> dict[str, Any]:
        return {"type": "postgres", "workers": workers,
                "meta": {"dsn": pg_dsn(), "table": self.table}}

    # -- counting ------------------------------------------------------------
    def file_lines(self) -> int:
        return jsonl_lines(self.file)

    def file_seen(self) -> Seen:
        """(producer, seq) -> copies in the file; every line must be a whole, right record."""
        seen: Seen = Counter()
        for rec in jsonl_records(self.file):
            rec_id = rec.pop("_id")
            key = record_key(rec)
            assert rec == authz_record(*key), f"file record {rec_id} is {rec}"
            seen[key] += 1
        return seen

    def pg_rows(self) -> int:
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()
            if row is None or row[0] is None:
                return 0
            got = conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()
            return int(got[0]) if got else 0

    def pg_seen(self) -> Seen:
        seen: Seen = Counter()
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            for rec_id, rec in conn.execute(f"SELECT id, record FROM {self.table}"):
                key = record_key(rec)
                assert rec == authz_record(*key), f"postgres record {rec_id} is {rec}"
                seen[key] += 1
        return seen

    def group(self, name: str) -> tuple[int, int]:
        """(lag, pending) of a sink's consumer group, from XINFO GROUPS."""
        if not any(g["name"].decode() == name for g in self.r.xinfo_groups(KEY)):
            return -1, -1
        return group_lag(self.r, KEY, name)  # counts itself when Redis reports no lag

    def all_acknowledged(self, *groups: str) -> bool:
        return all(self.group(g) == (0, 0) for g in groups)

    def dead_letters(self, sink: str) -> int:
        return int(self.r.xlen(f"{KEY}:dead:{sink}"))

    # -- teardown ---------------------------------------------------------------
    def close(self) -> None:
        errors: list[BaseException] = []
        for step in (lambda: self.producers and self.producers.kill(),
                     lambda: self.pump and self.pump.kill_all(),
                     self.daemon.close,
                     lambda: self.http and self.http.stop()):
            try:
                step()
            except BaseException as exc:  # keep tearing down
                errors.append(exc)
        drop_tables(self.table)
        if errors:
            raise errors[0]


@pytest.fixture
def stack(tmp_path: Path, redis_server: RedisServer) -> Iterator[Stack]:
    try:
        with psycopg.connect(pg_dsn(), connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {pg_dsn()!r} is not reachable: {exc}")
    s = Stack(tmp_path, redis_server)
    try:
        yield s
    finally:
        s.close()


def report(test: str, sink: str, seen: Seen, producers: int, count: int) -> tuple[int, int]:
    acc = account(seen, producer_ids(producers, count))
    print(f"{test}: {sink}: {acc}")
    assert acc.unexpected == 0, f"{sink}: {acc.unexpected} records that no producer sent"
    return acc.lost, acc.duplicated


# ----------------------------------------------------------------- tests


def test_four_producers_exactly_once_into_file_and_postgres(stack: Stack) -> None:
    """4 x 50,000 records through daemon and pump: each once in the file and in PostgreSQL."""
    n, count = 4, 50_000
    total = n * count
    stack.daemon.start()
    pump = stack.start_pump({"file": stack.file_sink(), "postgres": stack.pg_sink()})
    producers = stack.start_producers(n, count)
    assert producers.join(180) == 0, "a producer dropped records (block policy)"
    wait_until(lambda: stack.file_lines() >= total and stack.pg_rows() >= total, 150,
               "every record in the file and in PostgreSQL", interval=0.5)
    wait_until(lambda: stack.all_acknowledged("file", "postgres"), 30,
               "both groups acknowledged everything", interval=0.2)
    assert pump.stop() == 0
    assert stack.daemon.stop() == 0
    assert report("exactly-once", "file", stack.file_seen(), n, count) == (0, 0)
    assert report("exactly-once", "postgres", stack.pg_seen(), n, count) == (0, 0)
    assert stack.dead_letters("file") == stack.dead_letters("postgres") == 0


def test_kill_9_of_a_worker_and_of_the_whole_pump_loses_nothing(stack: Stack) -> None:
    """kill -9 of one postgres worker mid-load, then of the whole pump, then a restart.

    PostgreSQL deduplicates redeliveries by record id (0 duplicates); the
    file sink cannot, so its duplicates are counted and printed, not failed.
    """
    n, count = 4, 10_000
    total = n * count
    stack.daemon.start()
    pump = stack.start_pump({"file": stack.file_sink(), "postgres": stack.pg_sink(workers=2)},
                            read_count=2)
    wait_until(lambda: len(pump.workers("postgres")) == 2, 30, "two postgres workers")
    producers = stack.start_producers(n, count, pace=PACE)

    wait_until(lambda: stack.pg_rows() > 0, 60, "the first rows in PostgreSQL", interval=0.05)
    victim = pump.workers("postgres")[0]
    victim.kill()
    rows_at_kill = stack.pg_rows()
    print(f"kill-9: killed postgres worker {victim.pid} at {rows_at_kill} rows, "
          f"{stack.file_lines()} file lines, producers alive={producers.alive()}")
    wait_until(lambda: (len(ws := pump.workers("postgres")) == 2
                        and victim.pid not in [w.pid for w in ws]), 60,
               "the supervisor to restart the killed worker", interval=0.1)

    wait_until(lambda: stack.pg_rows() > rows_at_kill, 60, "rows after the worker restart",
               interval=0.05)
    print(f"kill-9: killed the whole pump at {stack.pg_rows()} rows, "
          f"{stack.file_lines()} file lines, producers alive={producers.alive()}")
    pump.kill_all()
    pump.start()

    assert producers.join(180) == 0, "a producer dropped records (block policy)"
    wait_until(lambda: stack.pg_rows() >= total and stack.file_lines() >= total, 120,
               "every record in PostgreSQL and in the file", interval=0.3)
    wait_until(lambda: stack.all_acknowledged("file", "postgres"), 30,
               "both groups acknowledged everything", interval=0.2)
    assert pump.stop() == 0
    pg_lost, pg_dup = report("kill-9", "postgres", stack.pg_seen(), n, count)
    file_lost, _file_dup = report("kill-9", "file", stack.file_seen(), n, count)
    assert (pg_lost, pg_dup, file_lost) == (0, 0, 0)
    assert stack.dead_letters("file") == stack.dead_letters("postgres") == 0


def test_sink_down_does_not_hold_back_the_other_and_drains_after(stack: Stack) -> None:
    """An http sink answering 503 for a while: the file sink keeps flowing, 0 lost in both.

    While the http target is down, the file group catches up with everything
    the producers sent (lag and pending 0, i.e. no growth) while the http
    group holds a backlog; once the target is back, the backlog drains.
    """
    n, count = 4, 10_000
    total = n * count
    http = stack.start_http()
    http.retry_after = "1"  # while down it answers 503 with Retry-After, as an overloaded one
    stack.daemon.start()
    sinks = {"file": stack.file_sink(),
             "http": {"type": "http", "workers": 1, "timeout_s": 2,
                      "meta": {"url": http.url, "health_url": f"{http.base}/health",
                               "max_request_s": 2}}}
    # max_deliveries high: the outage must hold batches, never dead-letter them
    pump = stack.start_pump(sinks, batch_deadline_s=3, max_deliveries=50, read_count=2)
    producers = stack.start_producers(n, count, pace=PACE)

    wait_until(lambda: http.accepted() > 0, 60, "the first records at the http target",
               interval=0.05)
    http.mode = "503"
    before = http.accepted()
    print(f"outage: http target down after {before} records")
    wait_until(lambda: pump.readyz()[1]["sinks"]["http"]["workers_in_outage"] >= 1, 60,
               "the http worker to see the outage", interval=0.1)

    # During the outage the file sink takes everything the producers send.
    max_file_backlog = 0

    def file_caught_up() -> bool:
        nonlocal max_file_backlog
        lag, pending = stack.group("file")
        max_file_backlog = max(max_file_backlog, lag + pending)
        return producers.alive() == 0 and stack.file_lines() >= total \
            and (lag, pending) == (0, 0)

    wait_until(file_caught_up, 120, "the file sink to take every record during the outage",
               interval=0.1)
    http_lag, http_pending = stack.group("http")
    print(f"outage: file group lag=0 pending=0 (largest backlog seen {max_file_backlog} "
          f"entries); http group lag={http_lag} pending={http_pending}, "
          f"posts refused={http.rejected}, http has {http.accepted()} records")
    assert http.mode == "503" and http_lag + http_pending > 0
    assert http.accepted() == before, "the target accepted records while down"

    http.mode = "ok"
    wait_until(lambda: http.accepted() >= total, 120, "the http backlog to drain",
               interval=0.2)
    wait_until(lambda: stack.all_acknowledged("file", "http"), 30,
               "both groups acknowledged everything", interval=0.2)
    assert producers.join(180) == 0, "a producer dropped records (block policy)"
    assert pump.stop() == 0
    file_lost, file_dup = report("sink-down", "file", stack.file_seen(), n, count)
    http_lost, _http_dup = report("sink-down", "http", Counter(stack.http_seen), n, count)
    assert (file_lost, file_dup, http_lost) == (0, 0, 0)
    assert stack.dead_letters("file") == stack.dead_letters("http") == 0
