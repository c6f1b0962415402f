"""Many ``collector-pump`` instances on one Redis: shared groups, a dead instance, other sinks.

Real processes only: a ``redis-server``, two ``collector-pump`` instances
(each its own supervisor and workers, on its own health port, so its default
consumer names ``<host>-<port>:<sink>:<i>`` differ) and the machine's
PostgreSQL. Records are counted by id at the sinks (lost, unexpected,
duplicated).
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from collector.testing import (
    Pump,
    RedisServer,
    account,
    fill_stream,
    jsonl_records,
    locked_tables,
    pg_dsn,
    wait_until,
)
from pump._redis import group_lag

psycopg = pytest.importorskip("psycopg")

KEY = "collector:analytics"
RING = "c" * 32
# a dead instance's entries are claimed 3 s after they were delivered to it
FAST_CLAIM = {"claim_idle_ms": 3000, "batch_deadline_s": 2, "read_count": 5}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def consumers(r: Any, group: str) -> dict[str, int]:
    """Consumer name -> its pending entries in ``group``."""
    return {_s(c["name"]): int(c["pending"]) for c in r.xinfo_consumers(KEY, group)}


def pg_ids(table: str) -> Counter[str]:
    """Record id -> rows in ``table`` (empty while the sink has not made it)."""
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if row is None or row[0] is None:
            return Counter()
        return Counter(row[0] for row in conn.execute(f"SELECT id FROM {table}"))


def table_exists(table: str) -> bool:
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        return row is not None and row[0] is not None


def test_a_killed_instance_s_pending_entries_are_taken_over(
        tmp_path: Path, redis_server: RedisServer, table: str) -> None:
    """Two pumps share the postgres group; one is killed -9 holding entries; 0 lost."""
    r = redis_server.client()
    sink = {"pg": {"type": "postgres", "workers": 1, "timeout_s": 1,
                   "meta": {"dsn": pg_dsn(), "table": table}}}
    pumps = [Pump.write(tmp_path / name, redis_server.url, sink, **FAST_CLAIM)
             for name in ("a", "b")]
    try:
        for p in pumps:
            p.start()
        wait_until(lambda: table_exists(table) and len(consumers(r, "pg")) == 2, 30,
                   "both instances' workers in the group (the sink made its table)")
        names = sorted(consumers(r, "pg"))
        host = socket.gethostname()
        assert all(n.startswith(f"{host}-") and n.endswith(":pg:0") for n in names), names
        a_name = f"{host}-{pumps[0].address.rpartition(':')[2]}:pg:0"
        assert a_name in names
        expected = {f"{RING}:{s}" for s in range(4000)}
        # The table is locked: both workers read entries and hold them, pending.
        with locked_tables(table):
            fill_stream(r, 4000, per_entry=50, ring=RING)
            wait_until(lambda: all(v > 0 for v in consumers(r, "pg").values()), 30,
                       "both instances holding entries")
            pumps[0].kill_all()
            held = consumers(r, "pg")[a_name]
            print(f"killed instance a holding {held} entries")
            assert held > 0
        # b takes a's entries over once they are claim_idle_ms idle, and delivers all.
        wait_until(lambda: len(pg_ids(table)) >= len(expected), 60,
                   "every record in PostgreSQL", interval=0.3)
        wait_until(lambda: group_lag(r, KEY, "pg") == (0, 0), 30, "pg acknowledged all")
        assert consumers(r, "pg")[a_name] == 0
        assert "Claimed entries left pending by another consumer." in pumps[1].log_text()
        acc = account(pg_ids(table), expected)
        print(f"postgres: {acc}")
        assert (acc.lost, acc.unexpected, acc.duplicated) == (0, 0, 0)
    finally:
        for p in pumps:
            p.close()


def test_instances_with_different_sinks_do_not_disturb_each_other(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Instance a (sink a) trims while instance b (sink b) is down: b still gets it all."""
    r = redis_server.client()

    def file_sink(name: str) -> dict[str, Any]:
        return {name: {"type": "file", "meta": {"path": str(tmp_path / f"{name}.jsonl"),
                                                "format": "jsonl"}}}

    def seen(name: str) -> Counter[str]:
        path = tmp_path / f"{name}.jsonl"
        return Counter(rec["_id"] for rec in jsonl_records(path)) if path.exists() else Counter()

    # each lists the other's sink in respect_groups (else it would be a foreign group)
    a = Pump.write(tmp_path / "a", redis_server.url, file_sink("a"), trim_interval_s=0.2,
                   respect_groups=["b"])
    b = Pump.write(tmp_path / "b", redis_server.url, file_sink("b"), trim_interval_s=0.2,
                   respect_groups=["a"])
    try:
        a.start()
        b.start()
        first = {f"{RING}:{s}" for s in fill_stream(r, 1000, ring=RING)}
        wait_until(lambda: len(seen("a")) == len(seen("b")) == 1000, 30, "both sinks")
        b.stop()
        second = {f"{RING}:{s}" for s in fill_stream(r, 2000, start=1000, ring=RING)}
        wait_until(lambda: len(seen("a")) == 3000, 30, "sink a, with b down")
        # a trims what both groups acknowledged (the first fill), never b's backlog
        wait_until(lambda: r.xlen(KEY) <= 21, 30, "a trimmed the first fill")
        assert group_lag(r, KEY, "b")[0] == 20  # b's 20 entries are all still there
        b.start()
        wait_until(lambda: len(seen("b")) == 3000, 30, "sink b after its return")
        for name in ("a", "b"):
            acc = account(seen(name), first | second)
            print(f"{name}: {acc}")
            assert (acc.lost, acc.unexpected, acc.duplicated) == (0, 0, 0)
        # both instances' groups only ever had their own consumers
        assert set(consumers(r, "a")) == {f"{socket.gethostname()}-"
                                          f"{a.address.rpartition(':')[2]}:a:0"}
    finally:
        a.close()
        b.close()


def test_consumer_names_come_from_the_instance_name() -> None:
    from pump._worker import consumer_name
    from pump.config import ConfigError, load_config

    sinks = {"pumps": {"null": {}}}
    cfg = load_config({**sinks, "health_address": "127.0.0.1:7999"}, environ={})
    assert consumer_name(cfg, "null", 2) == f"{socket.gethostname()}-7999:null:2"
    cfg = load_config({**sinks, "instance_name": "pump-eu-1"}, environ={})
    assert consumer_name(cfg, "null", 0) == "pump-eu-1:null:0"
    with pytest.raises(ConfigError, match="instance_name"):
        load_config({**sinks, "instance_name": "a:b"}, environ={})
