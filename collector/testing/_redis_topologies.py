"""A Redis Cluster of real ``redis-server`` processes on free loopback ports, and a
primary with replicas watched by ``redis-sentinel`` processes (the test kit)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

import redis
import redis.cluster

from ._redis_server import RedisServer
from ._wait import free_port, wait_until

__all__ = ["RedisClusterNodes", "RedisSentinelGroup"]


class RedisClusterNodes:
    """A Redis Cluster of its own: ``masters`` masters with ``replicas`` replicas each.

    Every node is a :class:`RedisServer` on a free loopback port in
    ``workdir/node-<port>`` started with ``--cluster-enabled yes``, a short
    ``--cluster-node-timeout`` (``node_timeout_ms``: a killed master is failed
    over within a few seconds) and ``--cluster-replica-validity-factor 0`` (a
    replica that lost its master for long may still be promoted); the
    cluster is made with ``redis-cli --cluster create``. :attr:`url` is a
    ``redis+cluster://`` URL with every node as a seed; :meth:`client` a
    redis-py ``RedisCluster``; :meth:`master_of` the node serving a key now;
    :meth:`kill` (``kill -9``) a node, :meth:`wait_failover` until a replica
    took its slots over; :meth:`reshard` moves slots with ``redis-cli``.
    """

    def __init__(self, workdir: Path, *, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 2000, appendonly: bool = True,
                 appendfsync: Literal["always", "everysec", "no"] = "everysec") -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH: run `sh .ci/setup` first")
        self.cli = cli
        self.workdir = workdir
        self.masters_wanted = masters
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        for _ in range(masters * (1 + replicas)):
            port = free_port()
            self.nodes.append(RedisServer(
                workdir / f"node-{port}", port=port, appendonly=appendonly,
                appendfsync=appendfsync, extra=[
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-port", str(free_port()),
                    "--cluster-node-timeout", str(node_timeout_ms),
                    "--cluster-replica-validity-factor", "0"]))

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{seeds}"

    def client(self, **kw: Any) -> redis.RedisCluster:
        nodes = [redis.cluster.ClusterNode("127.0.0.1", n.port) for n in self.nodes
                 if n.is_running()]
        return redis.RedisCluster(startup_nodes=nodes, **kw)

    def start(self, timeout: float = 60.0) -> RedisClusterNodes:
        for node in self.nodes:
            node.start()
        subprocess.run([self.cli, "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout)
        self.wait_healthy(timeout)
        return self

    def _info(self, node: RedisServer, section: str) -> dict[str, Any]:
        return node.client(socket_timeout=1).info(section)

    def healthy(self) -> bool:
        """Every live node says ``cluster_state:ok``; every master has its replicas in sync."""
        masters = 0
        for node in self.nodes:
            if not node.is_running():
                continue
            try:
                if node.client(socket_timeout=1).cluster("info")["cluster_state"] != "ok":
                    return False
                repl = self._info(node, "replication")
            except redis.RedisError:
                return False
            if repl["role"] == "master" and int(repl.get("connected_slaves", 0)) > 0:
                masters += 1
                if any(repl[f"slave{i}"]["state"] != "online"
                       for i in range(int(repl["connected_slaves"]))):
                    return False
        return masters >= self.masters_wanted or not self.replicas

    def wait_healthy(self, timeout: float = 60.0) -> None:
        wait_until(self.healthy, timeout, "the cluster healthy, replicas in sync",
                   interval=0.1)

    def master_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now (by a fresh client's slot map)."""
        client = self.client()
        try:
            port = int(client.get_node_from_key(key).port)
        finally:
            client.close()
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[RedisServer]:
        """The live nodes that are masters now."""
        out = []
        for node in self.nodes:
            if node.is_running():
                try:
                    if self._info(node, "replication")["role"] == "master":
                        out.append(node)
                except redis.RedisError:
                    pass
        return out

    def kill(self, node: RedisServer) -> None:
        """``kill -9`` of ``node`` (its replica takes over after the node timeout)."""
        node.kill()

    def wait_failover(self, timeout: float = 60.0) -> None:
        """Until every slot is served again by a live master (``cluster_state:ok``)."""
        def served() -> bool:
            for node in self.nodes:
                if node.is_running():
                    try:
                        if node.client(socket_timeout=1).cluster("info")[
                                "cluster_state"] != "ok":
                            return False
                    except redis.RedisError:
                        return False
            return True
        wait_until(served, timeout, "a replica promoted, every slot served", interval=0.1)

    def node_id(self, node: RedisServer) -> str:
        myid = node.client(socket_timeout=1).cluster("myid")
        return myid.decode() if isinstance(myid, bytes) else str(myid)

    def reshard(self, source: RedisServer, target: RedisServer, slots: int,
                timeout: float = 120.0) -> None:
        """Move ``slots`` slots from ``source`` to ``target`` with ``redis-cli --cluster
        reshard`` (keys move one by one with MIGRATE while clients keep writing)."""
        done = subprocess.run([self.cli, "--cluster", "reshard", f"127.0.0.1:{source.port}",
                               "--cluster-from", self.node_id(source),
                               "--cluster-to", self.node_id(target),
                               "--cluster-slots", str(slots), "--cluster-yes",
                               "--cluster-pipeline", "10"],
                              capture_output=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster reshard failed ({done.returncode}): "
                               f"{done.stdout.decode()[-1500:]}{done.stderr.decode()[-500:]}")

    def close(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> RedisClusterNodes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()



class RedisSentinelGroup:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels watching them.

    The data nodes are :class:`RedisServer` s (replicas started with
    ``--replicaof`` the primary); each sentinel is ``redis-server --sentinel``
    on a free loopback port with its own config file, monitoring service
    :attr:`service` with quorum 2, ``down_after_ms`` to call the primary
    down and a short failover timeout. :attr:`url` is
    ``redis+sentinel://<sentinels>/<service>``; :meth:`primary` the data
    node the sentinels name now; :meth:`kill` (``kill -9``) a node;
    :meth:`wait_failover` until the sentinels name another primary and it
    answers as one.
    """

    def __init__(self, workdir: Path, *, replicas: int = 1, sentinels: int = 3,
                 service: str = "collector", down_after_ms: int = 1000,
                 appendfsync: Literal["always", "everysec", "no"] = "everysec") -> None:
        self.workdir = workdir
        self.service = service
        self.down_after_ms = down_after_ms
        first = RedisServer(workdir / "data-0", appendfsync=appendfsync)
        self.nodes = [first] + [
            RedisServer(workdir / f"data-{i + 1}", appendfsync=appendfsync,
                        extra=["--replicaof", "127.0.0.1", str(first.port)])
            for i in range(replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{seeds}/{self.service}"

    def start(self, timeout: float = 60.0) -> RedisSentinelGroup:
        for node in self.nodes:
            node.start()
        primary = self.nodes[0]
        for port in self.sentinel_ports:
            d = self.workdir / f"sentinel-{port}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\nlogfile {d / 'sentinel.log'}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} 5000\n"
                f"sentinel parallel-syncs {self.service} 1\n")
            self.sentinels.append(subprocess.Popen(
                [primary.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        wait_until(self.healthy, timeout, "the sentinels see the primary and its replicas",
                   interval=0.1)
        return self

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)

    def primary_port(self) -> int | None:
        """The primary's port as most sentinels name it now (None: they do not agree)."""
        votes: dict[int, int] = {}
        for port in self.sentinel_ports:
            try:
                addr = self._sentinel(port).sentinel_get_master_addr_by_name(self.service)
            except redis.RedisError:
                continue
            if addr:
                votes[int(addr[1])] = votes.get(int(addr[1]), 0) + 1
        best = max(votes.items(), key=lambda kv: kv[1], default=(None, 0))
        return best[0] if best[1] * 2 > len(self.sentinel_ports) else None

    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(n for n in self.nodes if n.port == port)

    def healthy(self) -> bool:
        """The sentinels agree on a live primary that has every live replica in sync,
        and each sentinel knows the others."""
        port = self.primary_port()
        node = next((n for n in self.nodes if n.port == port and n.is_running()), None)
        if node is None:
            return False
        try:
            repl = node.client(socket_timeout=1).info("replication")
            if repl["role"] != "master":
                return False
            online = sum(1 for i in range(int(repl.get("connected_slaves", 0)))
                         if repl[f"slave{i}"]["state"] == "online")
            if online < sum(1 for n in self.nodes if n is not node and n.is_running()):
                return False
            for sport in self.sentinel_ports:
                info = self._sentinel(sport).sentinel_master(self.service)
                if int(info["num-other-sentinels"]) < len(self.sentinel_ports) - 1:
                    return False
        except (redis.RedisError, KeyError):
            return False
        return True

    def kill(self, node: RedisServer) -> None:
        """``kill -9`` of a data node."""
        node.kill()

    def wait_failover(self, old: RedisServer, timeout: float = 60.0) -> RedisServer:
        """Until the sentinels name a primary other than ``old`` that answers as one."""
        def promoted() -> RedisServer | None:
            port = self.primary_port()
            if port is None or port == old.port:
                return None
            node = next(n for n in self.nodes if n.port == port)
            role = node.client(socket_timeout=1).info("replication")["role"]
            return node if role == "master" else None
        return wait_until(promoted, timeout, "the sentinels promoted a replica", interval=0.1)

    def close(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> RedisSentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
