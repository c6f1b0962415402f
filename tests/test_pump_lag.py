"""Group lag as /readyz and /metrics see it, against a real redis-server."""

from __future__ import annotations

from collector.testing import RedisServer
from pump._redis import group_lag


def test_group_lag_counts_undelivered_and_is_zero_when_caught_up(
        redis_server: RedisServer) -> None:
    r = redis_server.client()
    for i in range(10):
        r.xadd("s", {"i": i})
    r.xgroup_create("s", "g", id="0")
    assert group_lag(r, "s", "g") == (10, 0)
    r.xreadgroup("g", "c", {"s": ">"}, count=4)
    assert group_lag(r, "s", "g") == (6, 4)
    r.xreadgroup("g", "c", {"s": ">"})
    assert group_lag(r, "s", "g") == (0, 10)


def test_group_lag_is_zero_after_a_restart_when_everything_was_read(
        redis_server: RedisServer) -> None:
    """After Redis reloads its append-only file, a caught-up group has lag 0."""
    r = redis_server.client()
    for i in range(50):
        r.xadd("s", {"i": i})
    r.xgroup_create("s", "g", id="0")
    ids = [eid for _, entries in r.xreadgroup("g", "c", {"s": ">"}) for eid, _ in entries]
    r.xack("s", "g", *ids)
    r.xtrim("s", minid=ids[-1])  # leaves the last entry; lag must still be 0
    redis_server.restart()
    assert group_lag(redis_server.client(), "s", "g") == (0, 0)
