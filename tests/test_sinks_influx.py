"""The influx sink against a real InfluxDB 1.6 (Debian's ``influxd``, ``influx_server``).

Points queried back over ``/query`` and compared with the records: tags,
typed fields (integer, float, string, boolean, times and maps as text), the
record's time as the point's timestamp in the configured precision, with a
msgpack timestamp's nanoseconds; a field type conflict at the server
attributed to the one record at fault while the rest are written; basic
auth with the password a secret; a missing database is an outage.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.testing import InfluxServer
from pump.sinks import Batch, OutageError, PermanentError, Record, build_sink
from pump.sinks._values import Timestamp


def _records(n: int) -> list[Record]:
    return [Record(f"ring:{i}", {"timestamp": 1_700_000_000 + i, "username": f"u {i % 2}",
                                 "effect": "allow", "latency_ms": 0.5 + i, "seq": i,
                                 "ok": i % 2 == 0, "note": 'say "hi", then \\ leave',
                                 "ctx": {"ip": "10.0.0.1"}, "none": None})
            for i in range(n)]


def test_points_hold_the_records_typed_and_timed(influx_server: InfluxServer) -> None:
    sink = build_sink("influx", {"url": influx_server.url, "database": "t1",
                                 "create_database": True, "precision": "ms",
                                 "max_points_per_request": 7})
    records = _records(20)
    records[3].data["timestamp"] = Timestamp.from_unix(1_700_000_100, 123_456_789)
    records[4].data["timestamp"] = "2026-01-02T03:04:05.250Z"
    records[5].data["at"] = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    sink.open()
    try:
        sink.write(Batch(records), deadline=time.monotonic() + 10)
        sink.write(Batch(records), deadline=time.monotonic() + 10)  # a redelivery
        sink.health_check(deadline=time.monotonic() + 5)
    finally:
        sink.close()
    points = {p["record_id"]: p for p in influx_server.points("t1", "analytics")}
    assert set(points) == {r.id for r in records}  # once each
    for r in records:
        p, d = points[r.id], r.data
        assert p["username"] == d["username"] and p["effect"] == "allow"
        assert p["latency_ms"] == d["latency_ms"] and p["seq"] == d["seq"]
        assert p["ok"] is d["ok"] and p["note"] == d["note"]
        assert p["ctx"] == '{"ip":"10.0.0.1"}'
    assert points["ring:0"]["time"] == 1_700_000_000 * 10**9
    assert points["ring:3"]["time"] == 1_700_000_100_123 * 10**6  # cut to ms
    assert points["ring:4"]["time"] == 1_767_323_045_250 * 10**6
    assert points["ring:5"]["at"] == "2026-01-02T03:04:05Z"
    types = influx_server.query('SHOW FIELD KEYS FROM "analytics"', "t1")
    kinds = dict(types["results"][0]["series"][0]["values"])
    assert kinds["seq"] == "integer" and kinds["latency_ms"] == "float"
    assert kinds["ok"] == "boolean" and kinds["note"] == "string"


def test_a_field_type_conflict_rejects_that_record_alone(influx_server: InfluxServer) -> None:
    sink = build_sink("influx", {"url": influx_server.url, "database": "t2",
                                 "create_database": True, "precision": "ns"})
    sink.open()
    records = _records(30)
    try:
        sink.write(Batch(records[:5]), deadline=time.monotonic() + 10)  # latency_ms: float
        records[12].data["latency_ms"] = "slow"
        records[20].data["seq"] = 2 ** 70  # refused by the sink before sending
        records[21].data["timestamp"] = "yesterday"
        with pytest.raises(PermanentError) as info:
            sink.write(Batch(records), deadline=time.monotonic() + 10)
    finally:
        sink.close()
    assert set(info.value.rejected) == {"ring:12", "ring:20", "ring:21"}
    assert "type conflict" in info.value.rejected["ring:12"]
    stored = {p["record_id"] for p in influx_server.points("t2", "analytics")}
    assert stored == {r.id for r in records} - {"ring:12", "ring:20", "ring:21"}


def test_basic_auth_and_a_missing_database(tmp_path: Path) -> None:
    server = InfluxServer(tmp_path / "auth", admin=("admin", "s3cret-pw")).start()
    try:
        server.query('CREATE DATABASE "t3"')
        good = build_sink("influx", {"url": server.url, "database": "t3",
                                     "username": "admin", "password": "s3cret-pw"})
        assert "s3cret-pw" not in repr(good.config)
        good.write(Batch(_records(3)), deadline=time.monotonic() + 10)
        good.close()
        bad = build_sink("influx", {"url": server.url, "database": "t3",
                                    "username": "admin", "password": "wrong"})
        with pytest.raises(PermanentError, match="401"):
            bad.write(Batch(_records(3)), deadline=time.monotonic() + 10)
        bad.close()
        missing = build_sink("influx", {"url": server.url, "database": "nope",
                                        "username": "admin", "password": "s3cret-pw"})
        with pytest.raises(OutageError, match="database not found"):
            missing.write(Batch(_records(3)), deadline=time.monotonic() + 10)
        missing.close()
        assert len(server.points("t3", "analytics")) == 3
    finally:
        server.stop()
