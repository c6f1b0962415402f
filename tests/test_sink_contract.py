"""One contract test run over every registered sink, each against a real target.

Targets: the local PostgreSQL, a redis-server (``redis_server`` fixture), a
local HTTP server, a TCP syslog receiver, a temporary directory, captured
stdout, a scraped Prometheus endpoint, a tansu broker for ``kafka`` (read
back with confluent-kafka; stalled by SIGSTOP), a private ``influxd`` for ``influx``
(queried back; stalled by SIGSTOP), for ``elasticsearch`` the real client against
``EsPeer``, a wire-level bulk API peer (no Elasticsearch server can be installed
here; it stalls on demand), and for ``mongo`` the real pymongo
driver against ``mockupdb``, an in-process MongoDB wire-protocol server
(``mongod`` cannot be installed on this machine; see ``collector.testing.MongoPeer``).

For every sink: a batch is written as the worker makes it (columns), then
written again as a list of records, as plugins make it (a redelivery): no
record is lost, and where the sink says it deduplicates no record is stored
twice; the health check passes; ``close`` twice is fine; a deadline already
passed makes ``write`` raise ``RetryableError``; and where the target can be
made to stall (an HTTP server that answers after 30 s, a PostgreSQL table
lock, a MongoDB server that never answers, a TCP peer that never replies),
the write raises ``RetryableError`` long before the stall would end: the
write stops, not only the wait.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import orjson
import psycopg
import pytest
from pydantic import ValidationError

from collector.testing import (
    EsPeer,
    HttpPeer,
    MongoPeer,
    SilentTcpServer,
    SyslogPeer,
    drop_tables,
    locked_tables,
    pg_dsn,
    unique_table,
    wait_until,
)
from pump.sinks import (
    Batch,
    Record,
    Records,
    RetryableError,
    Sink,
    Verdict,
    build_sink,
    registry,
)

STALL_S = 30.0  # how long a stalled target would hold a write


@dataclass
class Target:
    meta: dict[str, Any]
    #: ids as stored in the target (a Counter), a plain count, or None (unobservable)
    observe: Callable[[Sink], Counter[str] | int | None]
    #: given the opened sink, make the target stall and yield the sink to write with
    stall: Callable[[Sink], AbstractContextManager[Sink]] | None = None


def _jsonl_ids(data: bytes) -> Counter[str]:
    return Counter(orjson.loads(line)["_id"] for line in data.splitlines() if line.strip())


def _memory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    from pump.sinks.memory import MemorySink

    key = uuid.uuid4().hex

    @contextmanager
    def stall(sink: Sink) -> Iterator[Sink]:
        sink.delay_s = STALL_S  # type: ignore[attr-defined]
        yield sink

    yield Target({"key": key, "dedupe": True},
                 lambda s: Counter(r.id for r in MemorySink.instances[key].records), stall)


def _null(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    yield Target({}, lambda s: None)


def _file(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    path = tmp_path / "out.jsonl"
    yield Target({"path": str(path)}, lambda s: _jsonl_ids(path.read_bytes()))


def _stdout(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    capfd = request.getfixturevalue("capfd")
    yield Target({}, lambda s: _jsonl_ids(capfd.readouterr().out.encode()))


def _syslog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    peer = SyslogPeer("tcp").start()
    try:
        def observe(sink: Sink) -> Counter[str]:
            wait_until(lambda: len(peer.messages) >= 2 * BATCH, 10, "syslog messages")
            return peer.ids()

        yield Target({"transport": "tcp", "address": peer.address}, observe)
    finally:
        peer.stop()


def _http(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    peer = HttpPeer().start()

    @contextmanager
    def stall(sink: Sink) -> Iterator[Sink]:
        peer.mode = "stall"
        yield sink

    try:
        yield Target({"url": peer.url}, lambda s: Counter(peer.ids), stall)
    finally:
        peer.stop()


def _mongo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    peer = MongoPeer().start()

    @contextmanager
    def stall(sink: Sink) -> Iterator[Sink]:
        peer.stall.set()
        yield sink

    try:
        yield Target({"uri": peer.uri, "database": "c", "collection": "a"},
                     lambda s: Counter(peer.stored("c", "a").keys()), stall)
    finally:
        peer.stop()


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    table = unique_table("contract")

    def observe(sink: Sink) -> Counter[str]:
        with psycopg.connect(pg_dsn()) as conn:
            return Counter(r[0] for r in conn.execute(f"SELECT id FROM {table}"))

    @contextmanager
    def stall(sink: Sink) -> Iterator[Sink]:
        with locked_tables(table):
            yield sink

    try:
        yield Target({"dsn": pg_dsn(), "table": table}, observe, stall)
    finally:
        drop_tables(table)


def _aggregate(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    table = unique_table("contract_agg")

    def observe(sink: Sink) -> int:
        with psycopg.connect(pg_dsn()) as conn:
            row = conn.execute(f"SELECT coalesce(sum(count), 0) FROM {table}").fetchone()
        return int(row[0]) if row else 0

    @contextmanager
    def stall(sink: Sink) -> Iterator[Sink]:
        with locked_tables(f"{table}_applied"):
            yield sink

    try:
        yield Target({"dsn": pg_dsn(), "table": table}, observe, stall)
    finally:
        drop_tables(table, f"{table}_applied")


def _redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    server = request.getfixturevalue("redis_server")

    def observe(sink: Sink) -> Counter[str]:
        return Counter(f[b"id"].decode() for _, f in server.client().xrange("fwd"))

    @contextmanager
    def stall(sink: Sink) -> Iterator[Sink]:
        silent = SilentTcpServer()  # accepts, never answers
        stalled = build_sink("redis", {"url": f"redis://{silent.address}/0", "key": "fwd"})
        try:
            yield stalled
        finally:
            stalled.close()
            silent.stop()

    yield Target({"url": server.url, "key": "fwd"}, observe, stall)


def _kafka(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    broker = request.getfixturevalue("kafka_broker")
    broker.create_topic("contract")

    def observe(sink: Sink) -> Counter[str]:
        return broker.consume("contract", lambda seen: sum(seen.values()) >= 2 * BATCH,
                              key=lambda m: orjson.loads(m.value())["_id"], timeout=30)

    @contextmanager
    def stall(sink: Sink) -> Iterator[Sink]:
        broker.pause()
        try:
            yield sink
        finally:
            broker.resume()

    yield Target({"bootstrap_servers": broker.bootstrap, "topic": "contract"}, observe, stall)


def _influx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    server = request.getfixturevalue("influx_server")

    def observe(sink: Sink) -> Counter[str]:
        return Counter(p["record_id"] for p in server.points("contract", "analytics"))

    @contextmanager
    def stall(sink: Sink) -> Iterator[Sink]:
        server.pause()
        try:
            yield sink
        finally:
            server.resume()

    yield Target({"url": server.url, "database": "contract", "create_database": True},
                 observe, stall)


def _elasticsearch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    peer = EsPeer().start()

    @contextmanager
    def stall(sink: Sink) -> Iterator[Sink]:
        peer.stall.set()
        yield sink

    try:
        yield Target({"hosts": [peer.url]}, lambda s: peer.ids(), stall)
    finally:
        peer.stop()


def _prometheus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def observe(sink: Sink) -> int:
        url = f"http://127.0.0.1:{sink.port}/metrics"  # type: ignore[attr-defined]
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return int(sum(s.value for fam in text_string_to_metric_families(text)
                       for s in fam.samples if s.name == "collector_decisions_total"))

    yield Target({"address": "127.0.0.1:0"}, observe)


TARGETS: dict[str, Callable[[pytest.FixtureRequest, Path], Iterator[Target]]] = {
    "memory": _memory, "null": _null, "file": _file, "stdout": _stdout, "syslog": _syslog,
    "http": _http, "mongo": _mongo, "postgres": _postgres, "redis": _redis,
    "prometheus": _prometheus, "aggregate": _aggregate, "kafka": _kafka,
    "influx": _influx, "elasticsearch": _elasticsearch,
}
# Every built-in sink (a new one without a target above fails loudly). Sinks that
# tests register for themselves (tests/pump_plugins.py) bring their own tests.
SINK_TYPES = sorted(name for name, cls in registry().items()
                    if cls.__module__.startswith("pump.sinks."))
BATCH = 50


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    factory = TARGETS.get(request.param)
    if factory is None:
        pytest.fail(f"sink type {request.param!r} is registered but has no target in "
                    "tests/test_sink_contract.py: add one")
    yield from factory(request, tmp_path)


def _batch(columns: bool = False) -> Batch:
    """``BATCH`` new records: as the worker makes a batch (``columns``: the entry's
    ids, fields and bytes, ``pump.sinks.Records``) or as a list of ``Record``
    (plugins, tests)."""
    ring = uuid.uuid4().hex
    datas = [{"timestamp": 1700000000 + i, "username": f"u{i % 3}", "effect": "allow",
              "seq": i} for i in range(BATCH)]
    if columns:
        raws = [msgpack.packb(d) for d in datas]
        return Batch(chunks=[Records(f"{ring}:", range(BATCH), datas, raws)])
    return Batch([Record(f"{ring}:{i}", d) for i, d in enumerate(datas)])


def _as_records(batch: Batch) -> Batch:
    """The same records as a list of ``Record`` (a redelivery in the other form)."""
    return Batch([Record(r.id, dict(r.data), r.raw) for r in batch.records])


@pytest.mark.parametrize("target", SINK_TYPES, indirect=True)
def test_sink_contract(request: pytest.FixtureRequest, target: Target) -> None:
    sink_type = request.node.callspec.params["target"]
    sink = build_sink(sink_type, target.meta)
    sink.open()
    batch = _batch(columns=True)
    try:
        assert sink.write(batch, deadline=time.monotonic() + 10) is Verdict.OK
        # a redelivery, as a list of Record: both forms of a batch write the same
        assert sink.write(_as_records(batch), deadline=time.monotonic() + 10) is Verdict.OK

        seen = target.observe(sink)
        ids = [r.id for r in batch.records]
        if isinstance(seen, Counter):
            lost = [i for i in ids if seen[i] == 0]
            dups = sum(max(0, seen[i] - 1) for i in ids)
            extra = set(seen) - set(ids)
            assert not lost, f"{sink_type}: {len(lost)} records lost, e.g. {lost[:3]}"
            assert not extra, f"{sink_type}: unexpected ids {sorted(extra)[:3]}"
            if sink.deduplicates:
                assert dups == 0, f"{sink_type} claims to deduplicate but stored {dups} twice"
            else:
                assert dups <= BATCH
        elif isinstance(seen, int):
            expected = BATCH if sink.deduplicates else 2 * BATCH
            assert seen == expected, f"{sink_type}: counted {seen}, expected {expected}"

        sink.health_check(deadline=time.monotonic() + 10)

        started = time.monotonic()
        with pytest.raises(RetryableError):
            sink.write(batch, deadline=time.monotonic() - 1.0)
        if target.stall is not None:
            with target.stall(sink) as stalled:
                with pytest.raises(RetryableError):
                    stalled.write(_batch(), deadline=time.monotonic() + 0.5)
        # not a timing measurement: a write that only stopped waiting would sit out the stall
        assert time.monotonic() - started < STALL_S / 2
    finally:
        sink.close()
        sink.close()


@pytest.mark.parametrize("sink_type", SINK_TYPES)
def test_bad_meta_names_the_key(sink_type: str) -> None:
    with pytest.raises(ValidationError, match="no_such_option"):
        build_sink(sink_type, {"no_such_option": 1})
    config = registry()[sink_type].Config
    typed = [name for name, field in config.model_fields.items()
             if field.annotation in (int, float, bool)]
    if typed:
        with pytest.raises(ValidationError, match=typed[0]):
            build_sink(sink_type, {typed[0]: "not-a-number"})


def test_unknown_sink_type_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown sink type 'kafkaesque'") as info:
        build_sink("kafkaesque", {})
    for name in ("file", "mongo", "postgres", "http", "syslog", "redis", "prometheus"):
        assert name in str(info.value)
