"""Poison is per record; an outage is not poison.

Each case counts records by id: delivered, dead-lettered, lost (must be 0).

- One record nested 254 levels deep (ormsgpack decodes it, orjson refuses to
  encode it) among 1,000 good ones, at the file and PostgreSQL sinks:
  1,000 delivered, that one dead-lettered.
- Outages, each held with ``/readyz`` saying 503 and nothing dead-lettered,
  then delivered in full once the target is back: a full file system (a
  1 MiB tmpfs mounted by the test, as root), an HTTP target that accepts and
  never answers, the PostgreSQL table dropped under the pump, a column type
  changed under it. The pump runs with ``max_deliveries: 2`` and short
  deadlines, so that counting deliveries would have dead-lettered long
  before the target comes back.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import orjson
import ormsgpack
import psycopg
import pytest

from collector.common.stream import encode_entry
from collector.testing import (
    HttpPeer,
    Pump,
    RedisServer,
    account,
    authz_record,
    drop_tables,
    fill_stream,
    group_lags,
    jsonl_records,
    pg_dsn,
    unique_table,
    wait_until,
)
from pump._metrics import WORKER_COUNTERS
from pump._redis import ensure_groups, group_lag
from pump._worker import Stopper, Worker
from pump.config import load_config
from pump.sinks import OutageError
from pump.sinks._files import write_error as _write_error

KEY = "collector:analytics"
RING = "a" * 32
# Retries, deadlines and the delivery limit short enough that dead-lettering for an
# outage would happen within a second or two.
FAST = {"max_deliveries": 2, "batch_deadline_s": 2, "retry_initial_ms": 20,
        "retry_max_ms": 200}


def rid(seq: int) -> str:
    return f"{RING}:{seq}"


def dead(r: Any, sink: str) -> list[dict[bytes, bytes]]:
    return [f for _, f in r.xrange(f"{KEY}:dead:{sink}")]


def report(case: str, delivered: Any, n_dead: int) -> None:
    print(f"\n{case}: delivered {delivered.distinct} of {delivered.expected}, dead-lettered "
          f"{n_dead}, lost {delivered.lost}, duplicated {delivered.duplicated}")


# -- poison ----------------------------------------------------------------------

def nested(levels: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    node = top
    for _ in range(levels - 1):
        node["a"] = {}
        node = node["a"]
    return top


def test_one_deeply_nested_record_costs_no_good_record(redis_server: RedisServer,
                                                       tmp_path: Path) -> None:
    r = redis_server.client()
    bad = msgpack.packb({"seq": 500, "username": "x", "deep": nested(254)})
    ormsgpack.unpackb(bad)  # the pump decodes it ...
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(msgpack.unpackb(bad))  # ... and no JSON encoder takes it
    good = [msgpack.packb(authz_record(0, s)) for s in range(1000)]
    r.xadd(KEY, encode_entry(RING, 0, [*good[:500], bad, *good[500:]]))  # one entry of 1,001
    table = unique_table("poison")
    cfg = load_config({"redis_url": redis_server.url, "read_block_s": 0.05, **FAST,
                       "claim_idle_ms": 5000, "pumps": {
                           "file": {"type": "file", "meta": {"path": str(tmp_path / "o.jsonl")}},
                           "postgres": {"type": "postgres",
                                        "meta": {"dsn": pg_dsn(), "table": table}}}},
                      environ={})
    workers = [Worker(cfg, name, counters=WORKER_COUNTERS.local_slot(), stopper=Stopper())
               for name in ("file", "postgres")]
    try:
        for w in workers:
            w.sink.open()
            ensure_groups(r, [KEY], w.group)

        def turn() -> bool:
            for w in workers:
                w.step()
            return all(group_lag(r, KEY, w.group) == (0, 0) for w in workers)

        wait_until(turn, 60, "both sinks to finish the entry", interval=0)
        good_ids = [rid(s) for s in range(1001) if s != 500]
        file_got = account(Counter(x["_id"] for x in jsonl_records(tmp_path / "o.jsonl")),
                           good_ids)
        with psycopg.connect(pg_dsn()) as conn:
            pg_got = account([row[0] for row in conn.execute(f"SELECT id FROM {table}")],
                             good_ids)
        for sink, got in (("file", file_got), ("postgres", pg_got)):
            letters = dead(r, sink)
            report(f"poison at {sink}", got, len(letters))
            assert got.ok and got.distinct == 1000
            assert len(letters) == 1
            assert letters[0][b"dl_record_id"] == rid(500).encode()
            assert letters[0][b"dl_reason"] == b"rejected"
            assert msgpack.unpackb(letters[0][b"recs"]) == [bad]  # the original bytes
            assert b"JSON" in letters[0][b"dl_error"]
    finally:
        for w in workers:
            w.sink.close()
        drop_tables(table)


# -- outages -----------------------------------------------------------------------

def _start(tmp_path: Path, redis_server: RedisServer, sink: str, spec: dict[str, Any]) -> Pump:
    pump = Pump.write(tmp_path, redis_server.url, {sink: {"timeout_s": 1, **spec}}, **FAST)
    pump.start()
    return pump


def _held(pump: Pump, r: Any, sink: str, needle: str) -> dict[str, Any]:
    """Wait until /readyz says 503 for ``sink`` with ``needle`` in the reason, and the
    worker has failed more writes than max_deliveries would allow; nothing dead."""
    def unready() -> dict[str, Any] | None:
        code, detail = pump.readyz()
        info = detail["sinks"][sink]
        return info if code == 503 and not info["ready"] and needle in str(info) else None

    info = wait_until(unready, 60, f"/readyz to report the {sink} outage ({needle})")

    def errors() -> float:
        return sum(v for k, v in pump.metrics().items()
                   if k.startswith("collector_pump_write_errors") and f'"{sink}"' in k)

    wait_until(lambda: errors() >= 6, 60, "several failed attempts")
    assert dead(r, sink) == [], "an outage must not dead-letter"
    return info


def _drained(r: Any, sink: str) -> None:
    wait_until(lambda: group_lags(r).get(sink) == 0, 90, f"{sink} to take the backlog")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, mounted for the test (we are root) and unmounted after it."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                   check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def test_full_file_system_holds_the_batch_until_there_is_room(
        redis_server: RedisServer, tmp_path: Path, small_fs: Path) -> None:
    r = redis_server.client()
    filler = small_fs / "filler"
    with open(filler, "wb") as f:  # take every block
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    pump = _start(tmp_path, redis_server, "file",
                  {"type": "file", "meta": {"path": str(small_fs / "out.jsonl")}})
    try:
        expected = [rid(s) for s in fill_stream(r, 1500, per_entry=50)]
        info = _held(pump, r, "file", "No space left")
        filler.unlink()
        _drained(r, "file")
        # the supervisor caches its own health check for a second
        wait_until(lambda: pump.readyz()[0] == 200, 30, "/readyz 200 once there is room")
    finally:
        pump.close()
    got = account(Counter(x["_id"] for x in jsonl_records(small_fs / "out.jsonl")), expected)
    report("full file system", got, len(dead(r, "file")))
    assert got.lost == 0 and got.unexpected == 0 and dead(r, "file") == []
    assert info["workers_in_outage"] >= 1 or "No space" in info.get("error", "")


def test_quota_exceeded_is_an_outage_like_a_full_disk() -> None:
    for code in (errno.ENOSPC, errno.EDQUOT):
        assert isinstance(_write_error("file sink", OSError(code, os.strerror(code))),
                          OutageError)
    assert not isinstance(_write_error("file sink", OSError(errno.EIO, "I/O")), OutageError)


def test_http_target_that_never_answers_is_held_not_dead_lettered(
        redis_server: RedisServer, tmp_path: Path) -> None:
    r = redis_server.client()
    with HttpPeer() as peer:
        peer.mode = "stall"  # accepts, reads, answers nothing (for 30 s)
        pump = _start(tmp_path, redis_server, "http", {"type": "http",
                                                        "meta": {"url": peer.url}})
        try:
            expected = [rid(s) for s in fill_stream(r, 300, per_entry=50)]
            _held(pump, r, "http", "no answer")
            peer.mode = "ok"
            peer.release.set()
            _drained(r, "http")
        finally:
            pump.close()
        got = account(peer.ids, expected)
    report("http target that never answers", got, len(dead(r, "http")))
    assert got.lost == 0 and got.unexpected == 0 and dead(r, "http") == []


def test_postgres_table_dropped_mid_run_is_created_again(
        redis_server: RedisServer, tmp_path: Path) -> None:
    r = redis_server.client()
    table = unique_table("dropped")
    pump = _start(tmp_path, redis_server, "postgres",
                  {"type": "postgres", "meta": {"dsn": pg_dsn(), "table": table}})
    try:
        fill_stream(r, 500, per_entry=50)
        _drained(r, "postgres")
        drop_tables(table)
        second = [rid(s) for s in fill_stream(r, 500, per_entry=50, start=500)]
        _drained(r, "postgres")
        with psycopg.connect(pg_dsn()) as conn:
            got = account([row[0] for row in conn.execute(f"SELECT id FROM {table}")], second)
    finally:
        pump.close()
        drop_tables(table)
    report("postgres table dropped", got, len(dead(r, "postgres")))
    assert got.ok and dead(r, "postgres") == []


def test_postgres_column_type_changed_underneath_is_held_until_fixed(
        redis_server: RedisServer, tmp_path: Path) -> None:
    r = redis_server.client()
    table = unique_table("retyped")
    pump = _start(tmp_path, redis_server, "postgres",
                  {"type": "postgres", "meta": {"dsn": pg_dsn(), "table": table}})
    try:
        fill_stream(r, 200, per_entry=50)
        _drained(r, "postgres")
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN effect TYPE integer USING 0")
        fill_stream(r, 300, per_entry=50, start=200)
        _held(pump, r, "postgres", "effect integer")
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN effect TYPE text")
        _drained(r, "postgres")
        with psycopg.connect(pg_dsn()) as conn:
            got = account([row[0] for row in conn.execute(f"SELECT id FROM {table}")],
                          [rid(s) for s in range(500)])
    finally:
        pump.close()
        drop_tables(table)
    report("postgres column type changed", got, len(dead(r, "postgres")))
    assert got.ok and dead(r, "postgres") == []


