"""``bench chaos --cluster``: the run's Redis as a 3-master cluster with a replica each.

:class:`ClusterRedis` stands where the single ``RedisServer`` stands in the
run: its ``kill()`` is a ``kill -9`` of one master picked at random (its
replica is promoted after the 2 s node timeout, unless the master is back
first), ``start()`` brings every killed node back (a node whose replica
took over rejoins as that replica's replica), and ``client()`` is a
redis-py ``RedisCluster``. So the fault kind ``redis_restart`` becomes a
master kill and, held long enough, a failover.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

from collector.common.stream import shard_keys
from collector.testing import RedisClusterNodes, RedisServer

SHARDS = 3


class ClusterRedis:
    def __init__(self, workdir: Path, rng: random.Random, *, appendonly: bool,
                 appendfsync: Literal["always", "everysec", "no"]) -> None:
        self.nodes = RedisClusterNodes(workdir, node_timeout_ms=2000, appendonly=appendonly,
                                       appendfsync=appendfsync)
        self.rng = rng
        self.starts = 0
        self.killed: list[RedisServer] = []
        self.last_killed: int | None = None  # the port of the master killed last

    @property
    def url(self) -> str:
        return self.nodes.url

    def start(self) -> ClusterRedis:
        if self.starts == 0:
            self.nodes.start()
        else:
            for node in self.killed:
                node.start()
            self.killed = []
        self.starts += 1
        return self

    def kill(self) -> None:
        victim = self.rng.choice(self.nodes.masters())
        victim.kill()
        self.killed.append(victim)
        self.last_killed = victim.port

    def is_running(self) -> bool:
        return not self.killed

    def client(self, **kw: Any) -> Any:
        return self.nodes.client(**kw)

    def close(self) -> None:
        self.nodes.close()


def cluster_keys() -> list[str]:
    return shard_keys("collector:analytics", SHARDS, cluster=True)
