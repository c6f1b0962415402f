"""A network partition: collector-daemon and collector-pump cut from Redis for 10 s.

Real processes and a real network: the ``redis-server`` runs in a network
namespace the test makes (``NetnsLink``: ``ip netns``, a veth pair on random
link-local addresses, never an address outside this machine), the daemon,
the pump and the producers in this one, reaching Redis over the veth. The
link is taken down for 10 s mid-run and brought up again. Records are
counted by ``(producer, seq)`` at PostgreSQL.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from collector.testing import (
    Daemon,
    NetnsLink,
    Producers,
    Pump,
    RedisServer,
    account,
    pg_dsn,
    pg_seen,
    producer_ids,
    wait_until,
)
from pump._redis import group_lag

psycopg = pytest.importorskip("psycopg")

KEY = "collector:analytics"
CUT_S = 10.0


def test_daemon_and_pump_cut_from_redis_for_10_s_lose_nothing(
        tmp_path: Path, table: str) -> None:
    link = NetnsLink().start()
    redis_server = RedisServer(tmp_path / "redis", appendfsync="always", host=link.inner,
                               prefix=link.prefix)
    (tmp_path / "rings").mkdir(mode=0o700)
    daemon = Daemon.write(tmp_path, redis_server.url, full_policy="block",
                          block_timeout_ms=60_000, redis_timeout_s=1)
    pump = Pump.write(tmp_path / "pump", redis_server.url,
                      {"pg": {"type": "postgres", "meta": {"dsn": pg_dsn(), "table": table}}},
                      read_count=10, redis_timeout_s=1)
    producers = None
    n, count = 4, 5000
    try:
        redis_server.start()
        daemon.start()
        pump.start()
        # ~500 records/s per producer: the load outlasts the cut
        producers = Producers.analytics(daemon.config, n, count, pace=(25, 0.05)).start()
        wait_until(lambda: sum(pg_seen(table).values()) >= n * count // 5, 60,
                   "a fifth of the records in PostgreSQL", interval=0.2)
        link.cut()
        cut_at = time.monotonic()
        wait_until(lambda: daemon.readyz()[0] == 503, 30, "the daemon unready while cut")
        before = sum(pg_seen(table).values())
        wait_until(lambda: time.monotonic() >= cut_at + CUT_S, CUT_S + 5, "the cut's 10 s",
                   interval=0.1)
        during = sum(pg_seen(table).values()) - before
        link.heal()
        print(f"cut for {time.monotonic() - cut_at:.1f} s; PostgreSQL got {during} records "
              "meanwhile (the pump's batch in flight at most)")
        assert producers.join(120) == 0, "a producer dropped records (block policy)"
        wait_until(lambda: daemon.readyz()[0] == 200, 60, "the daemon ready again")
        wait_until(lambda: not list((tmp_path / "rings").glob("*.ring")), 60,
                   "the daemon drained and removed every ring", interval=0.2)
        r = redis_server.client()
        wait_until(lambda: group_lag(r, KEY, "pg") == (0, 0), 60, "pg acknowledged all",
                   interval=0.2)
        acc = account(pg_seen(table), producer_ids(n, count))
        print(f"partition of {CUT_S:g} s: postgres: {acc}")
        assert (acc.lost, acc.unexpected, acc.duplicated) == (0, 0, 0)
    finally:
        if producers is not None:
            producers.kill()
        pump.close()
        daemon.close()
        redis_server.kill()
        link.close()
