"""The kafka sink against a real broker (tansu, ``kafka_broker``), read back by a consumer.

Keys and values as configured (the record id or a field; JSON or msgpack),
topics per record field, a record larger than ``message_max_bytes`` named
alone in ``PermanentError.rejected`` while the others are delivered, and a
config that could weaken delivery (``options`` overriding ``acks``) refused.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgpack
import orjson
import pytest
from pydantic import ValidationError

from collector.testing import KafkaBroker
from pump.sinks import Batch, PermanentError, Record, build_sink


def _records(n: int) -> list[Record]:
    return [Record(f"ring:{i}", {"seq": i, "username": f"u{i % 2}", "route": "a" if i % 3 else "b",
                                 "at": datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)})
            for i in range(n)]


def test_msgpack_values_keys_from_a_field_and_topics_per_record(
        kafka_broker: KafkaBroker) -> None:
    kafka_broker.create_topic("fallback", partitions=1)
    kafka_broker.create_topic("b", partitions=2)
    sink = build_sink("kafka", {"bootstrap_servers": kafka_broker.bootstrap,
                                "topic": "fallback", "topic_field": "route",
                                "key_field": "username", "value_format": "msgpack",
                                "compression": "zstd"})
    sink.open()
    try:
        records = _records(30)
        for r in records:  # route "a" has no topic of its own: those go to "fallback"
            if r.data["route"] == "a":
                r.data["route"] = ""
        sink.write(Batch(records), deadline=time.monotonic() + 10)
    finally:
        sink.close()
    got: dict[str, tuple[str, bytes, dict]] = {}

    def keep(topic: str):
        def key(msg):  # type: ignore[no-untyped-def]
            value = msgpack.unpackb(msg.value(), timestamp=3)
            got[value["_id"]] = (topic, msg.key(), value)
            return value["_id"]
        return key

    want_b = {r.id for r in records if r.data["route"] == "b"}
    kafka_broker.consume("b", lambda c: set(c) >= want_b, key=keep("b"), timeout=20)
    kafka_broker.consume("fallback", lambda c: len(c) >= 30 - len(want_b),
                         key=keep("fallback"), timeout=20)
    assert set(got) == {r.id for r in records}
    for r in records:
        topic, key, value = got[r.id]
        assert topic == ("b" if r.id in want_b else "fallback")
        assert key == r.data["username"].encode()
        assert value["seq"] == r.data["seq"]
        assert value["at"] == r.data["at"]  # the msgpack timestamp extension


def test_an_oversized_record_is_rejected_alone_and_the_others_delivered(
        kafka_broker: KafkaBroker) -> None:
    kafka_broker.create_topic("analytics", partitions=2)
    sink = build_sink("kafka", {"bootstrap_servers": kafka_broker.bootstrap,
                                "message_max_bytes": 10_000})
    records = _records(20)
    records[7].data["pad"] = "p" * 20_000
    try:
        with pytest.raises(PermanentError) as info:
            sink.write(Batch(records), deadline=time.monotonic() + 10)
    finally:
        sink.close()
    assert set(info.value.rejected) == {"ring:7"}
    times = set()

    def key(msg):  # type: ignore[no-untyped-def]
        value = orjson.loads(msg.value())
        times.add(value["at"])
        return value["_id"]

    seen = kafka_broker.consume("analytics", lambda c: len(c) >= 19, key=key, timeout=20)
    assert set(seen) == {r.id for r in records} - {"ring:7"}
    assert all(n == 1 for n in seen.values())
    assert times == {"2026-01-02T03:04:05.6Z"}  # JSON times: ISO 8601 in UTC with Z


def test_options_cannot_weaken_delivery_and_secrets_stay_hidden() -> None:
    with pytest.raises(ValidationError, match="acks"):
        build_sink("kafka", {"options": {"acks": "1"}})
    sink = build_sink("kafka", {"security_protocol": "sasl_ssl", "sasl_username": "u",
                                "sasl_password": "hunter2", "ssl_key_password": "k3y"})
    assert "hunter2" not in repr(sink.config) and "k3y" not in str(sink.config)
    conf = sink.config.producer_config()  # type: ignore[attr-defined]
    assert conf["sasl.password"] == "hunter2" and conf["acks"] == "all"
    assert conf["enable.idempotence"] is True


def test_an_unreachable_broker_is_retryable_and_logged_once_per_kind(
        caplog: pytest.LogCaptureFixture) -> None:
    """librdkafka reports every reconnect attempt; the sink logs each kind once per 10 s."""
    from collector.testing import free_port
    from pump.sinks import RetryableError

    sink = build_sink("kafka", {"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    caplog.set_level("INFO", logger="pump.sinks.kafka")
    try:
        with pytest.raises(RetryableError, match="missing at the deadline"):
            sink.write(Batch(_records(3)), deadline=time.monotonic() + 2)
    finally:
        sink.close()
    kinds = [(r.getMessage(), r.kv.get("facility") or r.kv.get("error"))  # type: ignore[attr-defined]
             for r in caplog.records if r.name == "pump.sinks.kafka"]
    assert kinds, "the unreachable broker was not logged at all"
    assert len(kinds) == len(set(kinds)), f"logged more than once per kind: {kinds}"
