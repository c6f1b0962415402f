"""End to end into the aggregate, kafka, influx and elasticsearch sinks.

Producers (``collector.Analytics``, block policy) -> ``collector-daemon`` ->
a redis-server -> ``collector-pump`` -> each sink's server: the machine's
PostgreSQL for ``aggregate``, a tansu broker for ``kafka`` (read back with
confluent-kafka), a private ``influxd`` for ``influx`` (queried back over
``/query``) and, for ``elasticsearch``, the real ``elasticsearch`` client
against ``EsPeer``, a wire-level peer speaking the bulk
API (no Elasticsearch or OpenSearch server can be installed here).

Every test sends ``PRODUCERS x COUNT`` records plus one poison record that
the sink must reject alone, makes the target unavailable in the middle of
the load, and then counts the records at the target by id (lost, unexpected,
duplicated). The aggregate test instead kills the pump with ``kill -9`` at a
moment where entries are applied in PostgreSQL but not yet acknowledged in
Redis, and compares the aggregates with sums made from the source records.

Today's worker dead-letters the whole stream entry that holds a rejected
record (issue 9 makes that per record); the sinks write that entry's other
records anyway, so they are counted at the target, and the poison record is
found in the dead-letter stream.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import orjson
import psycopg
import pytest

from collector.common.stream import decode_entry
from collector.testing import (
    Daemon,
    EsPeer,
    InfluxServer,
    KafkaBroker,
    Producers,
    Pump,
    RedisServer,
    account,
    authz_record,
    drop_tables,
    locked_tables,
    pg_dsn,
    record_key,
    wait_until,
)

from .test_e2e import KEY, Stack

PRODUCERS, COUNT = 3, 6000
POISON = (0, 1234)  # (producer, seq) of the record every sink must reject
POISON_ID = f"{POISON[0]}:{POISON[1]}"
T0 = 1_700_000_000  # records' times: T0 + seq // 10 seconds


def make_record(producer: int, seq: int) -> dict[str, Any]:
    """The record producer ``producer`` sends as ``seq``: a time and a number to aggregate."""
    rec = authz_record(producer, seq)
    rec["timestamp"] = T0 + seq // 10
    rec["latency_ms"] = (seq * 37 + producer) % 500 + 0.25
    if (producer, seq) == POISON:
        rec["latency_ms"] = "slow"  # not a number: a type conflict for every sink
        rec["pad"] = "p" * 60_000  # and larger than the kafka sink's message_max_bytes
    return rec


class Load:
    """PRODUCERS producer processes sending COUNT records each (and the poison).

    The pace only spreads the load over a few seconds; nothing waits on it.
    """

    def __init__(self, collector_yaml: Path) -> None:
        self.producers = Producers.analytics(collector_yaml, PRODUCERS, COUNT,
                                             pace=(25, 0.03), record=make_record)

    def start(self) -> Load:
        self.producers.start()
        return self

    def join(self) -> None:
        assert self.producers.join(180) == 0, "a producer dropped records"

    def kill(self) -> None:
        self.producers.kill()


@pytest.fixture
def stack(tmp_path: Path, redis_server: RedisServer) -> Iterator[Stack]:
    s = Stack(tmp_path, redis_server)
    load: list[Load] = []
    s.load = load  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        for ld in load:
            ld.kill()
        s.close()


def start(stack: Stack, sink: dict[str, Any], *, pump_first: bool = True,
          **extra: Any) -> tuple[Pump, Load]:
    """Daemon, pump (started after the load when not ``pump_first``) and the load."""
    # small stream entries (20 records), so that there are many of them to deliver
    stack.daemon = Daemon.write(stack.tmp, stack.redis.url, full_policy="block",
                                block_timeout_ms=60_000, ring_capacity_bytes=8 << 20,
                                batch_size=20)
    stack.daemon.start()
    pump = stack.write_pump({"sink": sink}, read_count=5, max_deliveries=50, **extra)
    if pump_first:
        pump.start()
    load = Load(stack.collector_yaml)
    stack.load.append(load)  # type: ignore[attr-defined]
    return pump, load.start()


def expected_ids() -> set[str]:
    """Every (producer, seq) but the poison, as "p:s"."""
    return {f"{p}:{s}" for p in range(PRODUCERS) for s in range(COUNT)} - {POISON_ID}


def report(test: str, seen: Counter[str]) -> tuple[int, int, int]:
    acc = account(seen, expected_ids())
    print(f"{test}: {acc}")
    return acc.lost, acc.unexpected, acc.duplicated


def dead_lettered(stack: Stack) -> set[str]:
    """"p:s" of every record in the sink's dead-letter stream."""
    out = set()
    for _, fields in stack.r.xrange(f"{KEY}:dead:sink"):
        if b"recs" not in fields:
            continue
        for raw in decode_entry(fields).records:
            producer, seq = record_key(msgpack.unpackb(raw, raw=False))
            out.add(f"{producer}:{seq}")
    return out


def settle(stack: Stack, load: Load) -> None:
    load.join()
    wait_until(lambda: stack.all_acknowledged("sink"), 120,
               "the sink's group to acknowledge everything", interval=0.2)
    assert POISON_ID in dead_lettered(stack), "the poison record is not dead-lettered"


# ----------------------------------------------------------------- aggregate


def _agg_count(table: str) -> int:
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
            return 0
        return int(conn.execute(f"SELECT coalesce(sum(count), 0) FROM {table}").fetchone()[0])


def _ledger(table: str) -> set[str]:
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f"{table}_applied",)).fetchone()[0] is None:
            return set()
        return {r[0] for r in conn.execute(f"SELECT entry_id FROM {table}_applied")}


def test_aggregate_counts_each_record_once_across_kill_9(stack: Stack) -> None:
    """kill -9 of the pump while entries are applied in PostgreSQL but not acknowledged.

    With a backlog to drain, Redis is paused (SIGSTOP) and the whole pump
    killed while a worker has committed a write it could not acknowledge yet;
    Redis is killed too and restarted from its append-only file, so that the
    XACK left unread in its socket is never applied. Checked afterwards:
    entries both in the ledger and pending in Redis (retried until it
    happens). The pump is started again, so those entries are redelivered.
    Then the aggregate tables are locked for a while (the machine's
    PostgreSQL is shared and cannot be stopped), an outage the worker holds
    its batch through. The aggregates must equal
    sums made from the source records: nothing counted twice, nothing missing.
    """
    table = f"e2e_agg_{os.getpid()}"
    drop_tables(table, f"{table}_applied")
    sink = {"type": "aggregate", "workers": 2, "timeout_s": 2,
            "meta": {"dsn": pg_dsn(), "table": table, "bucket": "minute",
                     "dimensions": ["username", "effect"], "numeric_fields": ["latency_ms"]}}
    try:
        pump, load = start(stack, sink, pump_first=False, batch_deadline_s=4, trim=False)
        # a backlog first, so that the workers are busy writing when Redis pauses
        wait_until(lambda: stack.r.xlen(KEY) >= 150, 60, "a backlog of 150 entries",
                   interval=0.05)
        pending_applied: set[str] = set()
        for _attempt in range(10):
            pump.start()
            before = len(_ledger(table))
            wait_until(lambda b=before: len(_ledger(table)) > b, 60, "the pump to write",
                       interval=0.005)
            before = len(_ledger(table))
            stack.redis.pause()
            # A write committed during the pause cannot be acknowledged: its XACK
            # waits unread in Redis's socket. Killing Redis too (it keeps what it
            # had replied to in its append-only file) makes sure it is never read.
            try:
                wait_until(lambda b=before: len(_ledger(table)) > b, 1,
                           "a commit during the pause", interval=0.005)
            except AssertionError:
                pass
            pump.kill_all()
            stack.redis.kill()
            stack.redis.start()
            pending = {e["message_id"].decode() for e in
                       stack.r.xpending_range(KEY, "sink", "-", "+", 100_000)}
            pending_applied = pending & _ledger(table)
            if pending_applied:
                break
        assert pending_applied, "never caught a commit before its XACK"
        n_records = sum(len(decode_entry(f).records) for eid in pending_applied
                        for _, f in stack.r.xrange(KEY, eid, eid))
        print(f"aggregate kill-9: {len(pending_applied)} entries ({n_records} records) were "
              f"applied but not acknowledged at the kill; they are redelivered now")
        pump.start()

        with locked_tables(table, f"{table}_applied"):  # an outage of the aggregate tables
            wait_until(lambda: pump.readyz()[1]["sinks"]["sink"]["workers_in_outage"] >= 1, 60,
                       "a worker to see the outage", interval=0.1)
        settle(stack, load)
        assert pump.stop() == 0
        got = _stored(table)
    finally:
        drop_tables(table, f"{table}_applied")
    want = _expected_aggregates()
    total = sum(v[0] for v in want.values())
    twice = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    print(f"aggregate kill-9: {len(want)} rows, {total} records expected; stored "
          f"{sum(v[0] for v in got.values())} records in {len(got)} rows; "
          f"{len(twice)} rows differ")
    assert not twice, f"rows that differ (stored, expected): {list(twice.items())[:5]}"
    assert set(got) == set(want)


def _expected_aggregates() -> dict[tuple, tuple]:
    out: dict[tuple, list] = {}
    for p in range(PRODUCERS):
        for s in range(COUNT):
            if (p, s) == POISON:
                continue
            rec = make_record(p, s)
            bucket = datetime.fromtimestamp(rec["timestamp"] // 60 * 60, UTC)
            row = out.setdefault((bucket, rec["username"], rec["effect"]),
                                 [0, 0, 0.0, None, None])
            v = rec["latency_ms"]
            row[0] += 1
            row[1] += 1
            row[2] += v
            row[3] = v if row[3] is None else min(row[3], v)
            row[4] = v if row[4] is None else max(row[4], v)
    return {k: (v[0], v[1], pytest.approx(v[2]), v[3], v[4]) for k, v in out.items()}


def _stored(table: str) -> dict[tuple, tuple]:
    with psycopg.connect(pg_dsn()) as conn:
        rows = conn.execute(f"SELECT bucket, username, effect, count, latency_ms_count, "
                            f"latency_ms_sum, latency_ms_min, latency_ms_max FROM {table}")
        return {r[:3]: tuple(r[3:]) for r in rows}


# --------------------------------------------------------------------- kafka


def _write_errors(pump: Pump) -> float:
    return sum(v for k, v in pump.metrics().items()
               if k.startswith("collector_pump_write_errors") and '"sink"' in k)


def test_kafka_through_daemon_and_pump_across_a_paused_broker(
        stack: Stack, kafka_broker: KafkaBroker) -> None:
    """Into tansu, read back by a consumer and counted by id.

    In the middle of the load the broker is paused (SIGSTOP: connections stay
    open, nothing answers) until the pump has failed several writes, then
    resumed. Nothing may be lost; duplicates are allowed (a batch whose
    delivery reports did not come back is sent again: ``deduplicates`` is
    false) and reported. The poison record is larger than ``message_max_bytes``.
    """
    kafka_broker.create_topic("analytics", partitions=3)
    sink = {"type": "kafka", "workers": 2, "timeout_s": 2,
            "meta": {"bootstrap_servers": kafka_broker.bootstrap, "topic": "analytics",
                     "message_max_bytes": 50_000}}
    pump, load = start(stack, sink, batch_deadline_s=4)
    wait_until(lambda: stack.r.xlen(KEY) >= 100, 60, "a hundred entries", interval=0.05)
    kafka_broker.pause()
    try:
        wait_until(lambda: _write_errors(pump) >= 3, 60, "writes to fail", interval=0.1)
    finally:
        kafka_broker.resume()
    settle(stack, load)
    assert pump.stop() == 0

    def key(msg: Any) -> str:
        p, s = record_key(orjson.loads(msg.value()))
        return f"{p}:{s}"

    seen = kafka_broker.consume("analytics", lambda c: set(c) >= expected_ids(), key=key,
                                timeout=60)
    lost, unexpected, _duplicated = report("kafka", seen)  # duplicates are allowed
    assert lost == 0 and unexpected == 0
    assert dead_lettered(stack) == {POISON_ID}, "only the poison record is dead-lettered"


# -------------------------------------------------------------------- influx


def test_influx_through_daemon_and_pump_across_a_restart(
        stack: Stack, influx_server: InfluxServer) -> None:
    """Into a private influxd, queried back over ``/query`` and compared.

    In the middle of the load influxd is stopped (SIGTERM) until the pump
    has failed several writes, then started again on the same port and data.
    Each point must be its record: the tags, the fields as typed, the
    record's time as the timestamp; none lost, none twice (the record id is
    a tag, so a redelivered record overwrites its own point). The poison
    record's ``latency_ms`` is text where InfluxDB has a float: the server's
    field type conflict names the field, and the sink rejects that record alone.
    """
    sink = {"type": "influx", "workers": 2, "timeout_s": 2,
            "meta": {"url": influx_server.url, "database": "e2e", "create_database": True,
                     "precision": "ms"}}
    pump, load = start(stack, sink, batch_deadline_s=4)
    wait_until(lambda: stack.r.xlen(KEY) >= 100, 60, "a hundred entries", interval=0.05)
    influx_server.stop()
    try:
        wait_until(lambda: _write_errors(pump) >= 3, 60, "writes to fail", interval=0.1)
    finally:
        influx_server.start()
    settle(stack, load)
    assert pump.stop() == 0

    points = influx_server.points("e2e", "analytics")
    seen = Counter(f"{p['producer']}:{p['seq']}" for p in points)
    wrong = []
    for p in points:
        rec = make_record(p["producer"], p["seq"])
        want = {k: rec[k] for k in ("username", "effect", "latency_ms", "request_id", "pid")}
        if {k: p[k] for k in want} != want or p["time"] != rec["timestamp"] * 10**9:
            wrong.append(p)
    lost, unexpected, duplicated = report("influx", seen)
    assert lost == 0 and unexpected == 0 and duplicated == 0
    assert not wrong, f"{len(wrong)} points differ from their records, e.g. {wrong[:2]}"
    assert dead_lettered(stack) == {POISON_ID}, "only the poison record is dead-lettered"


# ------------------------------------------------------------- elasticsearch


def test_elasticsearch_through_daemon_and_pump_across_a_restart_and_429s(
        stack: Stack) -> None:
    """The real ``elasticsearch`` client in the pump against ``EsPeer``, a
    wire-level peer of the bulk API (no Elasticsearch server can be installed
    here), counted by ``_id`` and compared with the records.

    The peer answers some items 429 (retried by the pump), then in the middle
    of the load it is stopped (its listener and connections closed) until
    the pump has failed several writes, and started again on the same port
    and documents. None lost, none twice (``_id`` is the record id); the
    poison record's ``latency_ms`` is text in a float field: a
    ``document_parsing_exception`` for that item alone.
    """
    peer = EsPeer().start()
    try:
        peer.reject_items = 200
        sink = {"type": "elasticsearch", "workers": 2, "timeout_s": 2,
                "meta": {"hosts": [peer.url]}}
        pump, load = start(stack, sink, batch_deadline_s=4)
        wait_until(lambda: stack.r.xlen(KEY) >= 100 and peer.reject_items == 0, 60,
                   "a hundred entries and the 429s answered", interval=0.05)
        peer.stop()
        try:
            wait_until(lambda: _write_errors(pump) >= 8, 60, "writes to fail", interval=0.1)
        finally:
            peer.start()
        settle(stack, load)
        assert pump.stop() == 0
    finally:
        peer.stop()
    seen: Counter[str] = Counter()
    wrong = []
    for index, docs in peer.docs.items():
        for doc in docs.values():
            p, s = record_key(doc)
            seen[f"{p}:{s}"] += 1
            rec = make_record(p, s)
            when = datetime.fromtimestamp(rec["timestamp"], UTC)
            if (doc["latency_ms"] != rec["latency_ms"] or doc["request_id"] != rec["request_id"]
                    or doc["@timestamp"] != when.strftime("%Y-%m-%dT%H:%M:%SZ")
                    or index != when.strftime("analytics-%Y.%m.%d")):
                wrong.append((index, doc))
    lost, unexpected, duplicated = report("elasticsearch", seen)
    assert lost == 0 and unexpected == 0 and duplicated == 0
    assert not wrong, f"{len(wrong)} documents differ from their records, e.g. {wrong[:1]}"
    assert dead_lettered(stack) == {POISON_ID}, "only the poison record is dead-lettered"
