"""collector-daemon and collector-pump on a Sentinel-managed primary: a failover loses nothing.

Real processes only: a primary and a replica (``redis-server``), three
``redis-server --sentinel`` processes watching them (``RedisSentinelGroup``),
``collector-daemon`` and ``collector-pump`` with ``redis_url:
redis+sentinel://<sentinels>/collector``, producers recording through
``collector.Analytics``, and the machine's PostgreSQL. The primary is killed
with ``kill -9`` mid-run; the sentinels promote the replica; the old primary
is started again and the sentinels make it the new primary's replica.
Records are counted by ``(producer, seq)`` at PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.testing import (
    Daemon,
    Producers,
    Pump,
    RedisSentinelGroup,
    account,
    pg_dsn,
    pg_seen,
    producer_ids,
    wait_until,
)
from pump._redis import group_lag

psycopg = pytest.importorskip("psycopg")

KEY = "collector:analytics"


def test_a_primary_killed_under_sentinel_loses_nothing_with_replica_acknowledgement(
        tmp_path: Path, table: str) -> None:
    group = RedisSentinelGroup(tmp_path / "redis").start()
    (tmp_path / "rings").mkdir(mode=0o700)
    daemon = Daemon.write(tmp_path, group.url, full_policy="block", block_timeout_ms=60_000,
                          min_replicas_acked=1, replica_ack_timeout_ms=500)
    pump = Pump.write(tmp_path / "pump", group.url,
                      {"pg": {"type": "postgres", "meta": {"dsn": pg_dsn(), "table": table}}},
                      read_count=10)
    producers = None
    n, count = 4, 5000
    try:
        daemon.start()
        pump.start()
        producers = Producers.analytics(daemon.config, n, count, pace=(25, 0.01)).start()
        wait_until(lambda: sum(pg_seen(table).values()) >= n * count // 5, 60,
                   "a fifth of the records in PostgreSQL", interval=0.2)
        old = group.primary()
        group.kill(old)
        new = group.wait_failover(old)
        print(f"killed the primary on port {old.port}; the sentinels promoted {new.port}")
        old.start()  # comes back; the sentinels make it the new primary's replica
        wait_until(group.healthy, 60, "the old primary back as a replica", interval=0.2)
        assert producers.join(120) == 0, "a producer dropped records (block policy)"
        wait_until(lambda: not list((tmp_path / "rings").glob("*.ring")), 60,
                   "the daemon drained and removed every ring", interval=0.2)
        r = new.client()
        wait_until(lambda: group_lag(r, KEY, "pg") == (0, 0), 60, "pg acknowledged all",
                   interval=0.2)
        resent = sum(v for name, v in daemon.metrics().items()
                     if name.startswith("collector_daemon_replica_ack_failures"))
        acc = account(pg_seen(table), producer_ids(n, count))
        print(f"min_replicas_acked=1 under sentinel: postgres: {acc}; batches sent again: "
              f"{int(resent)}")
        assert (acc.lost, acc.unexpected, acc.duplicated) == (0, 0, 0)
    finally:
        if producers is not None:
            producers.kill()
        pump.close()
        daemon.close()
        group.close()


def test_sentinel_urls() -> None:
    from collector.common.settings import ConfigError
    from collector.config import load_config

    cfg = load_config({"redis_url": "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster"},
                      environ={})
    assert cfg.shard_keys() == [KEY] and not cfg.cluster()
    with pytest.raises(ConfigError, match="service"):
        load_config({"redis_url": "redis+sentinel://127.0.0.1:26379"}, environ={})
