"""End to end into the kafka, influx and elasticsearch sinks, each across an outage.

The load of ``tests/_e2e_sinks.py`` into a tansu broker for ``kafka`` (read
back with confluent-kafka), a private ``influxd`` for ``influx`` (queried back
over ``/query``) and, for ``elasticsearch``, the real ``elasticsearch`` client
against ``EsPeer``, a wire-level peer speaking the bulk API (no Elasticsearch
or OpenSearch server can be installed here). The aggregate sink's test:
``test_e2e_aggregate.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.testing import (
    EsPeer,
    InfluxServer,
    KafkaBroker,
    Pump,
    RedisServer,
    record_key,
    wait_until,
)

from ._e2e_sinks import (
    POISON_ID,
    dead_lettered,
    expected_ids,
    make_record,
    report,
    settle,
    sink_stack,
    start,
)
from .test_e2e import KEY, Stack


@pytest.fixture
def stack(tmp_path: Path, redis_server: RedisServer) -> Iterator[Stack]:
    yield from sink_stack(tmp_path, redis_server)


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
