"""The ``redis`` sink against a real redis-server (the ``redis_server`` fixture)."""

from __future__ import annotations

import time

import msgpack
import pytest
from pydantic import ValidationError

from collector.testing import RedisServer, SilentTcpServer
from pump.sinks import Batch, PermanentError, Record, RetryableError, Verdict, build_sink


def _batch(lo: int, hi: int) -> Batch:
    return Batch([Record(f"ring:{i}", {"seq": i, "username": "u", "blob": b"\x00\x01"})
                  for i in range(lo, hi)])


def _write_twice(sink, lo: int = 0, hi: int = 100) -> None:
    sink.open()
    try:
        assert sink.write(_batch(lo, hi), deadline=time.monotonic() + 5) is Verdict.OK
        assert sink.write(_batch(lo, hi), deadline=time.monotonic() + 5) is Verdict.OK
        assert sink.write(_batch(hi, hi + 50), deadline=time.monotonic() + 5) is Verdict.OK
        sink.health_check(deadline=time.monotonic() + 5)
    finally:
        sink.close()
        sink.close()


def _check(seqs: list[int], n: int) -> None:
    lost = set(range(n)) - set(seqs)
    dups = len(seqs) - len(set(seqs))
    assert (lost, dups) == (set(), 0), f"lost={sorted(lost)[:10]} duplicated={dups}"


def test_stream_one_entry_per_record_deduplicated(redis_server: RedisServer) -> None:
    _write_twice(build_sink("redis", {"url": redis_server.url, "key": "fwd"}))
    entries = redis_server.client().xrange("fwd")
    seqs = [msgpack.unpackb(f[b"rec"])["seq"] for _, f in entries]
    _check(seqs, 150)
    assert entries[0][1][b"id"] == b"ring:0"
    assert msgpack.unpackb(entries[0][1][b"rec"])["blob"] == b"\x00\x01"


def test_stream_batch_entries(redis_server: RedisServer) -> None:
    _write_twice(build_sink("redis", {"url": redis_server.url, "key": "fwd",
                                      "mode": "stream_batch"}))
    entries = redis_server.client().xrange("fwd")
    assert len(entries) == 2  # the redelivery added no entry
    seqs, ids = [], []
    for _, f in entries:
        batch_ids = msgpack.unpackb(f[b"ids"], raw=True)
        recs = msgpack.unpackb(f[b"recs"], raw=True)
        assert int(f[b"n"]) == len(batch_ids) == len(recs)
        ids += [i.decode() for i in batch_ids]
        seqs += [msgpack.unpackb(r)["seq"] for r in recs]
    _check(seqs, 150)
    assert ids[:2] == ["ring:0", "ring:1"]


def test_list_mode_is_the_seed_format(redis_server: RedisServer) -> None:
    key = "analytics-iam-system-analytics"
    _write_twice(build_sink("redis", {"url": redis_server.url, "key": key, "mode": "list"}))
    values = redis_server.client().lrange(key, 0, -1)
    _check([msgpack.unpackb(v)["seq"] for v in values], 150)


def test_dedupe_off_duplicates_and_max_len_trims(redis_server: RedisServer) -> None:
    _write_twice(build_sink("redis", {"url": redis_server.url, "key": "fwd",
                                      "dedupe_window_s": 0}))
    assert redis_server.client().xlen("fwd") == 250
    sink = build_sink("redis", {"url": redis_server.url, "key": "capped", "max_entries": 100})
    sink.open()
    for lo in range(0, 1000, 100):
        sink.write(_batch(lo, lo + 100), deadline=time.monotonic() + 5)
    sink.close()
    assert redis_server.client().xlen("capped") < 400


def test_wrong_key_type_is_permanent(redis_server: RedisServer) -> None:
    redis_server.client().set("fwd", "a string")
    sink = build_sink("redis", {"url": redis_server.url, "key": "fwd"})
    sink.open()
    try:
        with pytest.raises(PermanentError, match="WRONGTYPE"):
            sink.write(_batch(0, 2), deadline=time.monotonic() + 5)
    finally:
        sink.close()


def test_server_down_is_retryable_and_recovers(redis_server: RedisServer) -> None:
    sink = build_sink("redis", {"url": redis_server.url, "key": "fwd"})
    sink.open()
    try:
        sink.write(_batch(0, 10), deadline=time.monotonic() + 5)
        redis_server.kill()
        with pytest.raises(RetryableError):
            sink.write(_batch(10, 20), deadline=time.monotonic() + 2)
        with pytest.raises(RetryableError):
            sink.health_check(deadline=time.monotonic() + 2)
        redis_server.start()
        sink.write(_batch(10, 20), deadline=time.monotonic() + 5)
    finally:
        sink.close()
    seqs = [msgpack.unpackb(f[b"rec"])["seq"] for _, f in redis_server.client().xrange("fwd")]
    assert set(range(10, 20)) <= set(seqs)


def test_silent_server_times_out_at_the_deadline() -> None:
    silent = SilentTcpServer()
    sink = build_sink("redis", {"url": f"redis://{silent.address}/0", "key": "fwd"})
    try:
        with pytest.raises(RetryableError, match="Timeout"):
            sink.write(_batch(0, 2), deadline=time.monotonic() + 0.3)
    finally:
        sink.close()
        silent.stop()


def test_bad_meta_names_the_key() -> None:
    with pytest.raises(ValidationError, match="mode"):
        build_sink("redis", {"mode": "pubsub"})
    with pytest.raises(ValidationError, match="url"):
        build_sink("redis", {"url": "http://x"})
