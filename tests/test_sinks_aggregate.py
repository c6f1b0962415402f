"""The ``aggregate`` sink against the machine's PostgreSQL (``collector.testing.pg_dsn()``).

Each test has its own table (and ledger table), dropped afterwards. The
expected roll-ups are computed here from the records themselves and compared
with what PostgreSQL holds, row by row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from collector.testing import (
    drop_tables,
    pg_dsn,
    unique_table,
)
from pump.sinks import Batch, PermanentError, Record, Verdict, build_sink

ACCURACY = 0.01


@pytest.fixture
def agg_table() -> Iterator[str]:
    name = unique_table("agg_test")
    try:
        yield name
    finally:
        drop_tables(name, f"{name}_applied")


def _sink(table: str, **meta: Any) -> Any:
    sink = build_sink("aggregate", {"dsn": pg_dsn(), "table": table,
                                    "numeric_fields": ["latency_ms"], "bucket": "minute",
                                    **meta})
    sink.open()
    return sink


def _record(i: int) -> Record:
    return Record(f"ring:{i}", {"timestamp": 1700000000 + i * 7, "username": f"u{i % 3}",
                               "effect": "deny" if i % 4 == 0 else "allow",
                               "latency_ms": (i * 37) % 500 + 0.5})


def _batch(entries: list[tuple[str, range]]) -> Batch:
    records: list[Record] = []
    for _, span in entries:
        records += [_record(i) for i in span]
    return Batch(records, stream="collector:analytics", entry_ids=[e for e, _ in entries],
                 entry_sizes=[len(s) for _, s in entries])


def expected_rows(records: Iterable[Mapping[str, Any]],
                  bucket_s: int = 60) -> dict[tuple, tuple]:
    """(bucket, username, effect) -> (count, latency count, sum, min, max), from the records'
    data (also for tests/test_e2e_aggregate.py)."""
    out: dict[tuple, list] = {}
    for d in records:
        b = datetime.fromtimestamp(d["timestamp"] // bucket_s * bucket_s, UTC)
        row = out.setdefault((b, d["username"], d["effect"]), [0, 0, 0.0, None, None])
        v = d["latency_ms"]
        row[0] += 1
        row[1] += 1
        row[2] += v
        row[3] = v if row[3] is None else min(row[3], v)
        row[4] = v if row[4] is None else max(row[4], v)
    return {k: tuple(v) for k, v in out.items()}


def stored_rows(table: str) -> dict[tuple, tuple]:
    with psycopg.connect(pg_dsn()) as conn:
        rows = conn.execute(
            f"SELECT bucket, username, effect, count, latency_ms_count, latency_ms_sum, "
            f"latency_ms_min, latency_ms_max FROM {table}").fetchall()
    return {r[:3]: (r[3], r[4], pytest.approx(r[5]), r[6], r[7]) for r in rows}


def test_redelivered_entries_are_counted_once(agg_table: str) -> None:
    sink = _sink(agg_table)
    try:
        first = _batch([("1-0", range(0, 300)), ("1-1", range(300, 600))])
        assert sink.write(first, deadline=time.monotonic() + 10) is Verdict.OK
        assert sink.write(first, deadline=time.monotonic() + 10) is Verdict.OK  # redelivery
        # one entry applied before, one new: only the new one adds
        mixed = _batch([("1-1", range(300, 600)), ("2-0", range(600, 1000))])
        assert sink.write(mixed, deadline=time.monotonic() + 10) is Verdict.OK
        alone = _batch([("2-0", range(600, 1000))])  # the worker re-reads one entry alone
        assert sink.write(alone, deadline=time.monotonic() + 10) is Verdict.OK
    finally:
        sink.close()
        sink.close()
    want = expected_rows(_record(i).data for i in range(1000))
    got = stored_rows(agg_table)
    assert got == want
    assert sum(v[0] for v in got.values()) == 1000


def test_records_sent_again_in_another_entry_are_counted_once(agg_table: str) -> None:
    """The daemon sends a batch again when Redis applied an XADD whose reply was lost:
    the same records (ids) arrive in another entry, later or in the same batch,
    possibly with more records after them."""
    sink = _sink(agg_table)
    try:
        sink.write(_batch([("1-0", range(0, 300))]), deadline=time.monotonic() + 10)
        # resent later as a longer entry
        sink.write(_batch([("2-0", range(0, 400))]), deadline=time.monotonic() + 10)
        # first and resent copy in one batch, the copy again with more after it
        sink.write(_batch([("3-0", range(400, 500)), ("3-1", range(400, 600))]),
                   deadline=time.monotonic() + 10)
        # a copy of a range from the middle of earlier runs
        sink.write(_batch([("4-0", range(250, 450))]), deadline=time.monotonic() + 10)
    finally:
        sink.close()
    assert stored_rows(agg_table) == expected_rows(_record(i).data for i in range(600))
    with psycopg.connect(pg_dsn()) as conn:
        runs = conn.execute(f"SELECT ring, lo, hi, entry_id FROM {agg_table}_applied "
                            "ORDER BY lo").fetchall()
    assert runs == [("ring", 0, 299, "1-0"), ("ring", 300, 399, "2-0"),
                    ("ring", 400, 499, "3-0"), ("ring", 500, 599, "3-1")]


def test_same_entry_ids_of_another_stream_are_other_entries(agg_table: str) -> None:
    sink = _sink(agg_table)
    try:
        a = _batch([("5-0", range(0, 10))])
        b = Batch(_batch([("5-0", range(10, 20))]).records, stream="collector:analytics:{1}",
                  entry_ids=["5-0"])
        sink.write(a, deadline=time.monotonic() + 10)
        sink.write(b, deadline=time.monotonic() + 10)
    finally:
        sink.close()
    assert sum(v[0] for v in stored_rows(agg_table).values()) == 20


def test_quantiles_from_the_sketch_are_within_the_relative_accuracy(agg_table: str) -> None:
    sink = _sink(agg_table, bucket="day", dimensions=[],
                 sketch_relative_accuracy=ACCURACY)
    values = [((i * 7919) % 10007) / 10.0 + 0.1 for i in range(5000)]  # 0.1 .. ~1000
    records = [Record(f"q:{i}", {"timestamp": 1700000000, "latency_ms": v})
               for i, v in enumerate(values)]
    try:
        for n, lo in enumerate(range(0, 5000, 1000)):  # several upserts merge the sketch
            sink.write(Batch(records[lo:lo + 1000], stream="s", entry_ids=[f"{n}-0"]),
                       deadline=time.monotonic() + 10)
    finally:
        sink.close()
    ordered = sorted(values)
    with psycopg.connect(pg_dsn()) as conn:
        for q in (0.5, 0.95, 0.99):
            (got,) = conn.execute(
                f"SELECT collector_sketch_quantile(latency_ms_sketch, %s, %s) FROM {agg_table}",
                (q, ACCURACY)).fetchone()
            exact = ordered[int(q * (len(ordered) - 1))]
            assert abs(got - exact) <= ACCURACY * exact + 1e-9, f"p{q * 100:g}: {got} vs {exact}"
        count, total = conn.execute(
            f"SELECT latency_ms_count, latency_ms_sum FROM {agg_table}").fetchone()
    assert count == 5000 and total == pytest.approx(sum(values))


def test_a_poison_record_is_rejected_alone_and_the_rest_counted_once(agg_table: str) -> None:
    sink = _sink(agg_table)
    batch = _batch([("7-0", range(0, 50)), ("7-1", range(50, 100))])
    batch.records[60].data["latency_ms"] = "slow"  # not a number
    batch.records[70].data["timestamp"] = "yesterday"  # not a time
    try:
        for _ in range(2):  # the same verdict on redelivery, and nothing added twice
            with pytest.raises(PermanentError) as info:
                sink.write(batch, deadline=time.monotonic() + 10)
            assert set(info.value.rejected) == {"ring:60", "ring:70"}
            assert "latency_ms" in info.value.rejected["ring:60"]
        # the worker's retry of the poison's entry alone rejects the same record again
        alone = Batch(batch.records[50:], stream=batch.stream, entry_ids=["7-1"])
        with pytest.raises(PermanentError) as info:
            sink.write(alone, deadline=time.monotonic() + 10)
        assert set(info.value.rejected) == {"ring:60", "ring:70"}
    finally:
        sink.close()
    good = [r for i, r in enumerate(batch.records) if i not in (60, 70)]
    assert stored_rows(agg_table) == expected_rows(r.data for r in good)


def test_records_without_a_time_go_to_their_entry_s_bucket(agg_table: str) -> None:
    sink = _sink(agg_table, bucket="hour", numeric_fields=[])
    entry_ms = 1700000000 * 1000 + 123
    try:
        sink.write(Batch([Record("a", {"username": "x"}), Record("b", {})], stream="s",
                         entry_ids=[f"{entry_ms}-0"]), deadline=time.monotonic() + 10)
    finally:
        sink.close()
    with psycopg.connect(pg_dsn()) as conn:
        rows = conn.execute(f"SELECT bucket, username, effect, count FROM {agg_table} "
                            "ORDER BY username").fetchall()
    hour = datetime.fromtimestamp(1700000000 // 3600 * 3600, UTC)
    assert rows == [(hour, "", "", 1), (hour, "x", "", 1)]


def test_concurrent_workers_with_the_same_entries_count_them_once(agg_table: str) -> None:
    """Two workers writing overlapping entries at once (a claimed entry): each counted once."""
    errors: list[BaseException] = []
    batches = [_batch([(f"9-{i}", range(i * 100, i * 100 + 100)) for i in range(k, k + 5)])
               for k in (0, 3, 1)]  # entries 9-3 and 9-4 in all three

    def worker(batch: Batch) -> None:
        sink = _sink(agg_table)
        try:
            for _ in range(3):
                sink.write(batch, deadline=time.monotonic() + 20)
        except BaseException as exc:
            errors.append(exc)
        finally:
            sink.close()

    _sink(agg_table).close()  # tables created once, before the race
    threads = [threading.Thread(target=worker, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert stored_rows(agg_table) == expected_rows(_record(i).data for i in range(800))


def test_ledger_rows_past_the_retention_are_pruned(agg_table: str) -> None:
    sink = _sink(agg_table, applied_retention_s=600, prune_interval_s=0.001)
    try:
        sink.write(_batch([("1-0", range(0, 5))]), deadline=time.monotonic() + 10)
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            conn.execute(f"UPDATE {agg_table}_applied SET applied_at = now() - interval '1 h'")
        sink.write(_batch([("2-0", range(5, 10))]), deadline=time.monotonic() + 10)
    finally:
        sink.close()
    with psycopg.connect(pg_dsn()) as conn:
        ids = [r[0] for r in conn.execute(f"SELECT entry_id FROM {agg_table}_applied")]
    assert ids == ["2-0"]


def test_bad_meta_names_the_key() -> None:
    with pytest.raises(ValidationError, match="dimensions"):
        build_sink("aggregate", {"dimensions": ["user name"]})
    with pytest.raises(ValidationError, match="count"):
        build_sink("aggregate", {"dimensions": ["count"]})
    with pytest.raises(ValidationError, match="both"):
        build_sink("aggregate", {"dimensions": ["x"], "numeric_fields": ["x"]})
    with pytest.raises(ValidationError, match="bucket"):
        build_sink("aggregate", {"bucket": "week"})
