"""A sink that lags moves its backlog into its own durable spool; nobody else waits.

The spool's files (pump/_spool.py) on a real directory: order, fsync-ed
appends, the cursor, a torn tail cut at open, the bound with both overflow
policies. Then real process trees: a hung http target beside file and
PostgreSQL sinks under a small byte budget (producers drop nothing, the
healthy sinks get everything, the hung one spools and catches up);
``kill -9`` of the pump while it spools and while it feeds from the spool;
a full spool with ``drop_oldest`` losing exactly the records it counted, at
that sink only. Every test counts records by id: lost, unexpected, duplicated.
"""

from __future__ import annotations

import os
import stat
import time
from collections import Counter
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
    drop_tables,
    free_port,
    jsonl_records,
    pg_dsn,
    producer_ids,
    record_key,
    wait_until,
)
from pump._spool import Spool, SpoolFull

from .pump_plugins import ROOT, count_jsonl, produce, set_control

KEY = "collector:analytics"


def entry(i: int, n: int = 1) -> tuple[str, str, dict[bytes, bytes]]:
    return KEY, f"{i}-0", {b"n": str(n).encode(), b"recs": b"x" * 100, b"i": str(i).encode()}


def test_spool_files_keep_order_survive_reopen_and_cut_a_torn_tail(tmp_path: Path) -> None:
    d = tmp_path / "s"
    spool = Spool(d, 1 << 20, segment_bytes=1000)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for i in range(0, 30, 3):  # a segment is full at 1000 bytes: about 7 batches each
        spool.append([entry(j) for j in range(i, i + 3)])
    got = spool.peek(5)
    assert [e[1] for _, e in got] == [f"{i}-0" for i in range(5)]
    spool.commit([f for f, _ in got])
    with pytest.raises(RuntimeError, match="used by another process"):
        Spool(d, 1 << 20)
    spool.close()
    segs = sorted(d.glob("*.seg"))
    assert len(segs) >= 3  # rotated at 1000 bytes
    with open(segs[-1], "ab") as fh:
        fh.write(b"SPL1\x00\x10")  # a crash mid-append
    again = Spool(d, 1 << 20, segment_bytes=1000)
    assert [e[1] for _, e in again.peek(100)] == [f"{i}-0" for i in range(5, 30)]
    assert again.peek(1)[0][1][2][b"i"] == b"5"  # the fields as they were
    again.append([entry(30)])
    assert [e[1] for _, e in again.peek(100)][-2:] == ["29-0", "30-0"]
    again.close()


def test_spool_bound_block_and_drop_oldest(tmp_path: Path) -> None:
    blocking = Spool(tmp_path / "b", 1000, overflow="block")
    blocking.append([entry(i) for i in range(5)])
    with pytest.raises(SpoolFull):
        blocking.append([entry(i) for i in range(5, 10)])
    assert len(blocking) == 5
    dropping = Spool(tmp_path / "d", 1000, overflow="drop_oldest")
    assert dropping.append([entry(i, n=3) for i in range(5)]) == 0
    dropped = dropping.append([entry(i, n=3) for i in range(5, 8)])
    kept = [int(e[1].split("-")[0]) for _, e in dropping.peek(100)]
    assert dropped == 3 * (8 - len(kept)) and kept == list(range(8 - len(kept), 8))
    assert dropping.bytes <= 1000
    dropping.close()
    again = Spool(tmp_path / "d", 1000)
    assert [int(e[1].split("-")[0]) for _, e in again.peek(100)] == kept
    # a batch being delivered is never dropped; what is dropped behind it stays dropped
    flight = again.peek(2)
    more = again.append([entry(i, n=3) for i in range(8, 11)])
    after = [int(e[1].split("-")[0]) for _, e in again.peek(100)]
    assert after[:2] == kept[:2] and after[-3:] == [8, 9, 10]
    assert more == 3 * (len(kept) + 3 - len(after))
    again.close()
    reopened = Spool(tmp_path / "d", 1000)
    assert [int(e[1].split("-")[0]) for _, e in reopened.peek(100)] == after
    reopened.commit([f for f, _ in reopened.peek(2)])
    assert [int(e[1].split("-")[0]) for _, e in reopened.peek(100)] == after[2:]
    reopened.close()
    assert flight


def jsonl_sink(tmp: Path, name: str, **control: Any) -> dict[str, Any]:
    ctl = tmp / f"{name}.ctl"
    set_control(ctl, **({"mode": "ok", "healthy": True} | control))
    return {"type": "testjsonl", "timeout_s": 5,
            "meta": {"path": str(tmp / f"{name}.jsonl"), "control": str(ctl)}}


def spool_pump(tmp: Path, redis_server: RedisServer, pumps: dict[str, Any],
               **extra: Any) -> Pump:
    return Pump.write(tmp, redis_server.url, pumps, log=tmp / "pump.log",
                      env={"PYTHONPATH": str(ROOT)},
                      **{"plugins": ["tests.pump_plugins"], "read_count": 5,
                         "trim_interval_s": 0.1, "max_backlog_bytes": 256 << 10,
                         "batch_deadline_s": 1, "max_deliveries": 1000, **extra})


def metric(pump: Pump, name: str, sink: str) -> float:
    return pump.metrics().get(f'collector_pump_{name}{{sink="{sink}"}}', 0.0)


def test_kill_9_while_spooling_and_while_feeding_from_the_spool_loses_nothing(
        tmp_path: Path, redis_server: RedisServer) -> None:
    r = redis_server.client()
    pump = spool_pump(tmp_path, redis_server,
                      {"t": jsonl_sink(tmp_path, "t", mode="retryable", healthy=False)})
    ctl, out = tmp_path / "t.ctl", tmp_path / "t.jsonl"
    try:
        pump.start()
        expected = produce(r, 6000, per_entry=50)
        wait_until(lambda: metric(pump, "entries_spooled_total", "t") > 0, 60, "spooling")
        pump.kill_all()  # 1. while it moves entries into the spool
        expected += produce(r, 2000, per_entry=50, start=6000)
        pump.start()
        # it spools until the group holds back less than half its share (64 KiB here)
        wait_until(lambda: pump.log_text().count("within its share of the stream again") >= 1
                   and metric(pump, "spool_entries", "t") > 0, 60, "the backlog in the spool")
        wait_until(lambda: r.xlen(KEY) <= 20, 30, "the stream trimmed below the spooled "
                   "entries (160 entries of ~15 KB were produced)")
        set_control(ctl, mode="block_after_write", healthy=True)  # 2. while it feeds
        marker = Path(str(out) + ".inflight")
        wait_until(marker.exists, 60, "a write from the spool in flight")
        pump.kill_all()
        marker.unlink()
        set_control(ctl, mode="ok", healthy=True)
        pump.start()
        wait_until(lambda: set(count_jsonl(out)) >= set(expected), 60, "every record")
        wait_until(lambda: metric(pump, "spool_entries", "t") == 0, 30, "the spool empty")
        acc = account(count_jsonl(out), expected)
        print(f"kill -9 while spooling and feeding: {acc}")
        assert (acc.lost, acc.unexpected) == (0, 0)
        assert pump.stop() == 0
    finally:
        pump.close()


def test_full_spool_with_drop_oldest_loses_exactly_what_it_counted_at_that_sink(
        tmp_path: Path, redis_server: RedisServer) -> None:
    r = redis_server.client()
    down = {**jsonl_sink(tmp_path, "down", mode="retryable", healthy=False),
            "spool_max_bytes": 200_000, "overflow": "drop_oldest"}
    pump = spool_pump(tmp_path, redis_server, {"down": down,
                                               "good": jsonl_sink(tmp_path, "good")})
    try:
        pump.start()
        expected = produce(r, 10_000, per_entry=50)
        wait_until(lambda: len(count_jsonl(tmp_path / "good.jsonl")) == 10_000, 60, "good")
        wait_until(lambda: any("within its share of the stream again" in line
                               and "sink=down " in line for line in pump.log_text().splitlines()),
                   60, "the down sink's backlog moved into its spool")
        dropped = metric(pump, "spool_dropped_records_total", "down")
        assert dropped > 0, "the spool never filled: the test shows nothing"
        set_control(tmp_path / "down.ctl", mode="ok", healthy=True)
        wait_until(lambda: metric(pump, "spool_entries", "down") == 0
                   and len(count_jsonl(tmp_path / "down.jsonl")) >= 10_000 - dropped
                   and pump.readyz()[1]["sinks"]["down"]["lag"][KEY] == {"lag": 0,
                                                                        "pending": 0},
                   60, "the spool drained and the rest of the stream delivered")
        dropped = metric(pump, "spool_dropped_records_total", "down")
        down_acc = account(count_jsonl(tmp_path / "down.jsonl"), expected)
        good_acc = account(count_jsonl(tmp_path / "good.jsonl"), expected)
        print(f"drop_oldest: down {down_acc}, dropped counted {dropped}; good {good_acc}")
        assert down_acc.lost == dropped and down_acc.unexpected == 0
        # the good sink may have spooled too (10,000 records at once) and then get a batch
        # that was in flight twice: duplicated, never lost
        assert (good_acc.lost, good_acc.unexpected) == (0, 0)
        assert "dropped its oldest records" in pump.log_text()
        assert pump.stop() == 0
    finally:
        pump.close()


def test_hung_http_sink_spools_while_file_and_postgres_take_everything(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    """An http target that accepts and never answers, beside file and postgres, under a
    1 MiB budget (about 20 entries; 20,000 records are 9 MB): producers (full_policy
    drop) drop 0, file and postgres get every record, the http sink spools; the target
    recovers and it catches up."""
    psycopg = pytest.importorskip("psycopg")
    n, count = 2, 10_000
    table = f"spool_{os.getpid()}_{free_port()}"
    drop_tables(table)
    http_seen: Counter[tuple[int, int]] = Counter()
    http = HttpPeer(on_items=lambda items: http_seen.update(
        record_key(i["record"]) for i in items)).start()
    http.mode = "stall"
    daemon = Daemon.write(tmp_path, redis_server.url, batch_size=100, full_policy="drop",
                          max_backlog_bytes=1 << 20, ring_capacity_bytes=8 << 20)
    out = tmp_path / "file.jsonl"
    sinks = {"file": {"meta": {"path": str(out)}},
             "postgres": {"meta": {"dsn": pg_dsn(), "table": table}},
             "http": {"type": "http", "timeout_s": 1,
                      "meta": {"url": http.url, "health_url": f"{http.base}/health",
                               "max_request_s": 1}}}
    pump = spool_pump(tmp_path, redis_server, sinks, read_count=10, max_backlog_bytes=1 << 20)
    try:
        daemon.start()
        pump.start()
        # producers start once every sink's worker reads (its consumer is in its group):
        # spawned workers take seconds to start under load, and the budget would fill
        # before any of them reads, which is not what this test is about
        r = redis_server.client()
        wait_until(lambda: all(r.xinfo_consumers(KEY, sink) for sink in sinks), 120,
                   "every sink's worker reading the stream")
        producers = Producers.analytics(daemon.config, n, count, pace=(50, 0.01)).start()
        drops = producers.join()
        print(f"hung http: producers dropped {drops}")
        everything = producer_ids(n, count)

        def pg_seen() -> Counter[tuple[int, int]]:
            with psycopg.connect(pg_dsn(), autocommit=True) as conn:
                return Counter(record_key(rec) for (rec,) in conn.execute(
                    f"SELECT record FROM {table}"))
        wait_until(lambda: sum(1 for _ in jsonl_records(out)) >= n * count, 60, "file")
        wait_until(lambda: sum(pg_seen().values()) >= n * count, 60, "postgres")
        spooled = metric(pump, "records_spooled_total", "http")
        print(f"hung http: http spooled {spooled} records")
        assert drops == 0 and spooled > 0
        for name, seen in (("file", Counter(record_key(r) for r in jsonl_records(out))),
                           ("postgres", pg_seen())):
            acc = account(seen, everything)
            print(f"{name}: {acc}")
            assert (acc.lost, acc.unexpected) == (0, 0)
        t0 = time.monotonic()
        http.mode = "ok"
        http.release.set()
        wait_until(lambda: set(http_seen) >= set(everything), 120, "the http sink to catch up")
        acc = account(http_seen, everything)
        print(f"http after recovery ({time.monotonic() - t0:.1f} s): {acc}")
        assert (acc.lost, acc.unexpected) == (0, 0)
        assert pump.stop() == 0 and daemon.stop() == 0
    finally:
        pump.close()
        daemon.close()
        http.stop()
        drop_tables(table)
