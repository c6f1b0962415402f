"""The spooler measures what a group holds back without trusting a stale XINFO lag.

After an AOF restart or a Redis Cluster failover, ``XINFO GROUPS`` can report a
lag for a group that has read everything (``bench chaos --cluster`` showed 203
with the group's last-delivered id equal to the stream's last id). The spooler
took it at its word: one large entry left on the shard kept it "moving", and
its worker, which reads the stream only when the spooler is not moving, never
read any shard again (a sink stalled for good, its records still in Redis).
Real redis-server; ``XSETID ... ENTRIESADDED`` makes the stale counter.
"""

from __future__ import annotations

from pathlib import Path

from collector.testing import RedisServer
from pump._metrics import WORKER_COUNTERS
from pump._spool import Spool
from pump._spooler import Spooler
from pump._stop import Stopper
from pump.config import load_config

KEY = "collector:analytics"


def test_a_stale_redis_lag_does_not_keep_the_spooler_moving(
        tmp_path: Path, redis_server: RedisServer) -> None:
    r = redis_server.client()
    config = load_config({"redis_url": redis_server.url, "max_backlog_bytes": 64 << 10,
                          "spool_dir": str(tmp_path / "spool"),
                          "pumps": {"t": {"type": "null"}}})
    r.xgroup_create(KEY, "t", id="0", mkstream=True)
    eid = r.xadd(KEY, {"n": b"1", "recs": b"x" * 40_000})  # over half of the 32 KiB share
    assert r.xreadgroup("t", "c", {KEY: ">"})
    assert r.xack(KEY, "t", eid) == 1
    r.execute_command("XSETID", KEY, eid, "ENTRIESADDED", 200, "MAXDELETEDID", "0-0")
    group = r.xinfo_groups(KEY)[0]
    assert group["lag"] == 199 and group["last-delivered-id"] == eid  # the stale state
    spool = Spool(tmp_path / "s", 1 << 20)
    try:
        spooler = Spooler(config, "t", "c", spool, WORKER_COUNTERS.local_slot(), Stopper(), r)
        assert spooler.held_bytes(KEY) == 0
        spooler.tick()
        assert not spooler.moving()
        assert len(spool) == 0
    finally:
        spool.close()
