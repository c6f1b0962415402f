"""The one Redis round trip a batch costs: ``XADD`` pipelined with ``XLEN`` (and ``WAIT``).

The command is packed here rather than by redis-py: its packer copies a
large value slowly (about 1.5 ms per 500 KB with hiredis), which would cost
more than everything else the flusher does. A value over 16 KiB (the
batch's blob) is handed to the socket as it is, never copied. A value may
also be a list of byte strings, sent one after the other as ONE bulk string
(the batch's ``recs``: an array header and the records as the ring reader
packed them, ``collector.common.stream.encode_packed_entry``).

:class:`StreamWriter` owns the flusher's connections: one to a single
node, or one per master of a Redis Cluster, found by the shard key's slot
from redis-py's slot map. A ``MOVED`` reply (a slot moved: resharding, a
failover) or a connection error makes it re-read the slot map before the
next batch; ``MOVED`` is retried at once, once. An ``ASK`` reply (the slot is
being migrated and the key is already at the target) sends the same round
trip to the target, prefixed by ``ASKING``. With ``replicas > 0`` the round
trip ends with ``WAIT replicas timeout_ms`` on the same connection, and a
batch fewer replicas acknowledged raises :class:`NotReplicated`: the caller
keeps it in the ring and sends it again (the stream may then hold it twice,
with the same record ids).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.exceptions import AskError, MovedError, RedisClusterException

from collector.common.cluster import ClusterUnavailable, LazyCluster

_COPY_LIMIT = 16384  # larger values go to the socket as their own chunk
_ASKING = b"*1\r\n$6\r\nASKING\r\n"


class NotReplicated(redis.RedisError):
    """The master has the batch, but fewer replicas than required acknowledged it."""

    def __init__(self, acked: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(f"WAIT: {acked} of {wanted} replicas acknowledged the batch within "
                         f"{timeout_ms} ms")
        self.acked = acked


Fields = dict[str, bytes] | dict[str, bytes | list[bytes]]


def pack_xadd_xlen(key: bytes, fields: Fields, *, wait: tuple[int, int] | None = None,
                   asking: bool = False) -> list[bytes]:
    """``XADD key * field value ...`` then ``XLEN key`` (then ``WAIT n ms``), as RESP chunks
    for one send; ``asking`` puts ``ASKING`` first. A list value is one bulk string
    of its parts, in order."""
    items: list[bytes | list[bytes]] = [b"XADD", key, b"*"]
    for k, v in fields.items():
        items.append(k.encode())
        items.append(v)
    head = [_ASKING] if asking else []
    head.append(b"*%d\r\n" % len(items))
    chunks: list[bytes] = []
    for item in items:
        if isinstance(item, list):
            head.append(b"$%d\r\n" % sum(map(len, item)))
            for part in item:
                if len(part) > _COPY_LIMIT:
                    chunks.append(b"".join(head))
                    chunks.append(part)
                    head = []
                else:
                    head.append(part)
            head.append(b"\r\n")
        elif len(item) > _COPY_LIMIT:
            head.append(b"$%d\r\n" % len(item))
            chunks.append(b"".join(head))
            chunks.append(item)
            head = [b"\r\n"]
        else:
            head.append(b"$%d\r\n%s\r\n" % (len(item), item))
    if asking:
        head.append(_ASKING)
    head.append(b"*2\r\n$4\r\nXLEN\r\n$%d\r\n%s\r\n" % (len(key), key))
    if wait is not None:
        n, ms = (b"%d" % wait[0], b"%d" % wait[1])
        head.append(b"*3\r\n$4\r\nWAIT\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(n), n, len(ms), ms))
    chunks.append(b"".join(head))
    return chunks


def xadd_xlen(conn: Any, key: bytes, fields: Fields, *,
              wait: tuple[int, int] | None = None, asking: bool = False) -> tuple[int, int]:
    """Add one entry to stream ``key`` on redis-py connection ``conn``:
    (the stream's length, replicas that acknowledged it or -1 without ``wait``).

    On any error the connection is dropped (its state is unknown); the next
    call reconnects.
    """
    chunks = pack_xadd_xlen(key, fields, wait=wait, asking=asking)
    try:
        conn.send_packed_command(chunks, check_health=False)
        if asking:
            conn.read_response()
        conn.read_response()  # the entry id
        if asking:
            conn.read_response()
        length = int(conn.read_response())
        acked = int(conn.read_response()) if wait is not None else -1
        return length, acked
    except BaseException:
        conn.disconnect()
        raise


class StreamWriter:
    """The flusher's connections and its round trip (module docstring)."""

    def __init__(self, client: Any, *, replicas: int = 0, timeout_ms: int = 1000) -> None:
        self.client = client
        self.cluster = isinstance(client, LazyCluster)
        self.wait = (replicas, timeout_ms) if replicas > 0 else None
        # node name ("" for a single node) -> (its pool, the connection taken from it)
        self.conns: dict[str, tuple[Any, Any]] = {}
        self.stale = False  # re-read the cluster's slot map before the next round trip

    def _connection(self, key: bytes, at: tuple[str, int] | None = None) -> tuple[str, Any]:
        if not self.cluster:
            name, pool = "", self.client.connection_pool
        else:
            cluster = self.client.real()
            try:
                if self.stale:
                    cluster.nodes_manager.initialize()
                    self.stale = False
                node = (cluster.get_node(host=at[0], port=at[1]) if at is not None
                        else cluster.get_node_from_key(key))
                if node is None:  # an ASK target not in the slot map yet
                    cluster.nodes_manager.initialize()
                    node = cluster.get_node(host=at[0], port=at[1]) if at else None
                if node is None:
                    raise ClusterUnavailable(f"no cluster node {at} for an ASK redirection")
                name, pool = node.name, cluster.get_redis_connection(node).connection_pool
            except RedisClusterException as exc:
                raise ClusterUnavailable(str(exc)) from exc
        held = self.conns.get(name)
        if held is not None and held[0] is pool:
            return name, held[1]
        if held is not None:  # the node's client was made again (a new slot map)
            held[0].release(held[1])
        conn = pool.get_connection()
        self.conns[name] = (pool, conn)
        return name, conn

    def _once(self, key: bytes, fields: Fields,
              at: tuple[str, int] | None = None) -> tuple[int, int]:
        name, conn = self._connection(key, at)
        try:
            return xadd_xlen(conn, key, fields, wait=self.wait, asking=at is not None)
        except BaseException:
            # Disconnected by xadd_xlen: back to its pool, whose get_connection connects
            # it again (a Sentinel pool asks for the primary then; a reconnect on the
            # connection's own first send would go to the old address).
            pool, _ = self.conns.pop(name)
            pool.release(conn)
            raise

    def send(self, key: bytes, fields: Fields) -> int:
        """Write one entry; the shard's length. Raises ``RedisError`` / ``OSError``
        (:class:`NotReplicated` when too few replicas acknowledged it)."""
        try:
            try:
                length, acked = self._once(key, fields)
            except MovedError:
                self.stale = True
                length, acked = self._once(key, fields)
            except AskError as exc:
                length, acked = self._once(key, fields, (exc.host, int(exc.port)))
        except (redis.RedisError, OSError):
            if self.cluster:
                self.stale = True
            raise
        if self.wait is not None and acked < self.wait[0]:
            raise NotReplicated(acked, *self.wait)
        return length
