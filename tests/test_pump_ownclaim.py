"""``claim_own``: a worker keeping its entries claimed never takes another consumer's.

Against a real redis-server: entries read by one consumer and then claimed by
another (as the spooler claims a lagging worker's) stay the other's; the
first keeps, with its idle time reset and no delivery counted, only those
still its own. A bare ``XCLAIM <me> 0`` takes them all back, which is what
made a hung sink's batch reach it twice while it was being spooled.
"""

from __future__ import annotations

from typing import Any

import redis

from collector.testing import RedisServer, wait_until
from pump._ownclaim import claim_own


def _rows(r: redis.Redis, key: str) -> dict[str, dict[str, Any]]:
    rows = r.xpending_range(key, "g", min="-", max="+", count=100)
    return {row["message_id"].decode(): row for row in rows}


def _pel(r: redis.Redis, key: str) -> dict[str, tuple[str, int]]:
    return {i: (row["consumer"].decode(), row["times_delivered"])
            for i, row in _rows(r, key).items()}


def test_claims_again_only_its_own_pending_entries(redis_server: RedisServer) -> None:
    r: Any = redis.Redis.from_url(redis_server.url)
    key = "s"
    ids = [r.xadd(key, {"n": str(i)}).decode() for i in range(6)]
    r.xgroup_create(key, "g", id="0")
    r.xreadgroup("g", "worker", {key: ">"})  # all six the worker's, delivered once
    r.xclaim(key, "g", "spool", 0, ids[:3])  # the spooler takes three (a delivery each)
    r.xack(key, "g", ids[5])  # one done
    before = _pel(r, key)
    wait_until(lambda: min(row["time_since_delivered"] for row in _rows(r, key).values()) >= 1000,
               timeout=10, what="the pending entries idle for 1 s")

    assert claim_own(r, key, "g", "worker", ids) == ids[3:5]
    idle = {i: row["time_since_delivered"] for i, row in _rows(r, key).items()}
    assert all(idle[i] < 1000 for i in ids[3:5]), idle  # its own: idle time reset
    assert all(idle[i] >= 1000 for i in ids[:3]), idle  # the spooler's: left alone
    after = _pel(r, key)
    assert {i: after[i][0] for i in ids[:5]} == {**{i: "spool" for i in ids[:3]},
                                                 **{i: "worker" for i in ids[3:5]}}
    assert after == before  # no delivery counted, no owner changed, nothing re-added
    assert ids[5] not in after
    assert claim_own(r, key, "g", "nobody", ids) == []
    assert claim_own(r, key, "g", "worker", []) == []
    r.close()


def test_a_bare_xclaim_would_take_them_back(redis_server: RedisServer) -> None:
    """Why the script: the behaviour it exists to avoid, on the same server."""
    r: Any = redis.Redis.from_url(redis_server.url)
    key = "s"
    ids = [r.xadd(key, {"n": str(i)}).decode() for i in range(2)]
    r.xgroup_create(key, "g", id="0")
    r.xreadgroup("g", "worker", {key: ">"})
    r.xclaim(key, "g", "spool", 0, ids)
    r.xclaim(key, "g", "worker", 0, ids, justid=True)
    assert {c for c, _ in _pel(r, key).values()} == {"worker"}
    r.close()
