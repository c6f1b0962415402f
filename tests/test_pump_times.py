"""Times in records: the msgpack timestamp extension (type -1) decoded to a UTC
``datetime`` in the pump and stored natively by every sink.

Real targets: the file system, captured stdout, a TCP syslog receiver, the
local PostgreSQL, a redis-server, and for ``mongo`` the real pymongo driver
against ``mockupdb`` (a MongoDB wire-protocol peer: ``mongod`` cannot be
installed on this machine).
"""

from __future__ import annotations

import struct
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import orjson
import psycopg
import pytest

from collector.common.stream import encode_entry
from collector.testing import MongoPeer, RedisServer, SyslogPeer, pg_dsn, wait_until
from pump._metrics import WORKER_COUNTERS
from pump._redis import ensure_groups, group_lag
from pump._worker import Stopper, Worker
from pump.config import load_config
from pump.sinks import Batch, Record, build_sink
from pump.sinks._values import Int64, Timestamp, UndecodableRecord, pack_record, unpack_record
from pump.sinks.memory import MemorySink

KEY = "collector:analytics"
# (seconds, nanoseconds, the extension's payload length): the 32-, 64- and 96-bit forms
FORMS = [
    (1_700_000_000, 0, 4),
    (1_700_000_000, 123_456_789, 8),
    (4_855_000_000, 987_654_321, 8),       # 2123: iam's ExpireAt, now + 100 years
    (17_179_869_184, 1, 12),               # 2514: past the 64-bit form
    (-1, 999_999_999, 12),                 # negative seconds
    (-62_135_596_800, 0, 12),              # Go's zero time.Time: year 1
]
WHEN = Timestamp.from_unix(1_700_000_000, 123_456_789)
WHEN_ISO = "2023-11-14T22:13:20.123456789Z"


def ext(seconds: int, nanoseconds: int) -> bytes:
    """The extension exactly as the msgpack spec draws it (not through our encoder)."""
    if seconds >> 34 == 0 and nanoseconds == 0 and seconds < 1 << 32:
        return b"\xd6\xff" + struct.pack(">I", seconds)
    if seconds >> 34 == 0:
        return b"\xd7\xff" + struct.pack(">Q", nanoseconds << 34 | seconds)
    return b"\xc7\x0c\xff" + struct.pack(">Iq", nanoseconds, seconds)


@pytest.mark.parametrize(("seconds", "nanoseconds", "size"), FORMS)
def test_every_timestamp_form_decodes_to_utc_and_encodes_back(
        seconds: int, nanoseconds: int, size: int) -> None:
    raw = b"\x81\xa1t" + ext(seconds, nanoseconds)
    t = unpack_record(raw)["t"]
    assert isinstance(t, datetime) and t.tzinfo is UTC
    assert t.unix() == (seconds, nanoseconds)
    assert t.timestamp() == pytest.approx(seconds + nanoseconds / 1e9, abs=1e-6)
    assert len(t.to_ext()) == size
    assert pack_record({"t": t}) == raw  # the same bytes the producer wrote
    # the slow path (a map with a bytes key, which ormsgpack refuses) agrees
    assert unpack_record(b"\x81\xc4\x01t" + ext(seconds, nanoseconds))[b"t"].unix() == (
        seconds, nanoseconds)


def test_other_extensions_and_bad_timestamps_are_refused_with_their_reason() -> None:
    with pytest.raises(UndecodableRecord, match="extension type 5 is not supported"):
        unpack_record(msgpack.packb({"a": msgpack.ExtType(5, b"x")}))
    with pytest.raises(UndecodableRecord, match="4, 8 or 12 bytes"):
        unpack_record(b"\x81\xa1t\xd5\xff\x00\x00")
    with pytest.raises(UndecodableRecord, match="outside the years 1 to 9999"):
        unpack_record(b"\x81\xa1t" + ext(-10**12, 0))


def _worker(redis_server: RedisServer, key: str) -> Worker:
    cfg = load_config({"redis_url": redis_server.url, "read_block_s": 0.05,
                       "retry_initial_ms": 5, "retry_max_ms": 20, "batch_deadline_s": 0.5,
                       "claim_idle_ms": 1000,
                       "pumps": {"m": {"type": "memory", "meta": {"key": key}}}}, environ={})
    w = Worker(cfg, "m", counters=WORKER_COUNTERS.local_slot(), stopper=Stopper())
    w.sink.open()
    ensure_groups(redis_server.client(), [KEY], "m")
    return w


def test_a_record_with_another_extension_is_dead_lettered_alone(
        redis_server: RedisServer) -> None:
    r = redis_server.client()
    w = _worker(redis_server, "ext")
    good = [msgpack.packb({"seq": i, "at": msgpack.Timestamp(1_700_000_000 + i, 5)})
            for i in range(5)]
    bad = msgpack.packb({"seq": 5, "x": msgpack.ExtType(42, b"??")})
    r.xadd(KEY, encode_entry("e" * 32, 0, [*good[:3], bad, *good[3:]]))
    sink = MemorySink.instances["ext"]
    wait_until(lambda: w.step() >= 0 and group_lag(r, KEY, "m") == (0, 0), 30, "delivery")
    assert sorted(rec.data["seq"] for rec in sink.records) == [0, 1, 2, 3, 4]
    assert sink.records[0].data["at"] == Timestamp.from_unix(1_700_000_000, 5)
    dead = [f for _, f in r.xrange(f"{KEY}:dead:m")]
    assert len(dead) == 1
    assert dead[0][b"dl_reason"] == b"undecodable_record"
    assert b"extension type 42" in dead[0][b"dl_error"]
    assert msgpack.unpackb(dead[0][b"recs"]) == [bad]


def _batch() -> Batch:
    zero = Timestamp.from_unix(-62_135_596_800)
    return Batch([Record("t:1", {"when": WHEN, "zero": zero, "n": Int64(7), "user": "a"})],
                 stream=KEY, entry_ids=["1-0"])


def _write(type_name: str, meta: dict[str, Any]) -> Any:
    sink = build_sink(type_name, meta)
    sink.open()
    sink.write(_batch(), deadline=time.monotonic() + 10)
    return sink


def test_json_sinks_write_iso_8601_with_z(tmp_path: Path, capfd: pytest.CaptureFixture[str]
                                          ) -> None:
    path = tmp_path / "out.jsonl"
    _write("file", {"path": str(path)}).close()
    line = orjson.loads(path.read_bytes())
    assert line["when"] == WHEN_ISO and line["zero"] == "0001-01-01T00:00:00Z"
    assert line["n"] == 7

    _write("stdout", {}).close()
    assert orjson.loads(capfd.readouterr().out)["when"] == WHEN_ISO

    peer = SyslogPeer("tcp").start()
    try:
        _write("syslog", {"transport": "tcp", "address": peer.address}).close()
        wait_until(lambda: peer.messages, 10, "the syslog message")
        assert peer.messages[0]["msg"]["when"] == WHEN_ISO
    finally:
        peer.stop()

    csv_path = tmp_path / "out.csv"
    _write("file", {"path": str(csv_path), "format": "csv",
                    "csv_columns": ["when", "n", "_id"]}).close()
    assert csv_path.read_text().splitlines()[1] == f"{WHEN_ISO},7,t:1"


def test_http_body_is_iso_8601_with_z() -> None:
    from pump.sinks._encode import dumps

    body = orjson.loads(dumps([{"id": "t:1", "record": _batch().records[0].data}]))
    assert body[0]["record"]["when"] == WHEN_ISO


def test_postgres_stores_a_timestamptz_and_iso_8601_in_jsonb() -> None:
    table = f"times_{uuid.uuid4().hex[:12]}"
    sink = _write("postgres", {"dsn": pg_dsn(), "table": table, "timestamp_field": "when"})
    try:
        with psycopg.connect(pg_dsn()) as conn:
            ts, when, zero = conn.execute(
                f"SELECT ts, record->>'when', (record->>'zero')::timestamptz FROM {table}"
            ).fetchone()
            conn.execute(f"DROP TABLE {table}")
        assert ts == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
        assert when == WHEN_ISO
        assert zero == datetime(1, 1, 1, tzinfo=UTC)
    finally:
        sink.close()


def test_mongo_stores_bson_dates_and_int64() -> None:
    from bson.int64 import Int64 as BsonInt64

    peer = MongoPeer().start()
    try:
        _write("mongo", {"uri": peer.uri, "database": "c", "collection": "t"}).close()
        doc = peer.stored("c", "t")["t:1"]
    finally:
        peer.stop()
    assert doc["when"].replace(tzinfo=UTC) == datetime(2023, 11, 14, 22, 13, 20, 123000,
                                                        tzinfo=UTC)
    assert doc["zero"] == datetime(1, 1, 1)
    assert type(doc["n"]) is BsonInt64 and doc["n"] == 7


def test_redis_sink_forwards_the_msgpack_timestamp(redis_server: RedisServer) -> None:
    _write("redis", {"url": redis_server.url, "key": "fwd", "mode": "list"}).close()
    rec = msgpack.unpackb(redis_server.client().lrange("fwd", 0, -1)[0], timestamp=0)
    assert rec["when"] == msgpack.Timestamp(1_700_000_000, 123_456_789)
    assert rec["zero"] == msgpack.Timestamp(-62_135_596_800, 0)
