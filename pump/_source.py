"""Compatibility source: drain the seed's Redis list into the stream.

iam-authz-server (and tyk) RPUSH each analytics record, msgpack-encoded, to
a Redis list (``analytics-iam-system-analytics``); iam-pump takes them with
LRANGE+DEL, so a pump crash between taking and writing loses them (the
at-most-once window of that format).

We close that window on the pump side: one Lua script moves up to
``list_batch_size`` records from the head of the list into one stream entry
(the format of ``collector/common/stream.py``) *atomically* -- LRANGE, LTRIM and
XADD run as one script, so a record is either still in the list or in the
stream, never in neither. From there only the stream path writes sinks,
with its at-least-once guarantees. The entry says the records' format
(``source.format``: ``auto`` by default, ``iam``, or ``raw`` for none), so
workers convert iam-authz-server's records to what iam-pump stores
(``pump/iam/record.py``). Record ids are ``list-<list_key>:<n>``
with ``n`` from a counter key ``<list_key>:collector-seq`` bumped in the
same script. What remains at-most-once is outside the pump: a producer
whose RPUSH did not reach Redis, or a Redis that loses its last second of
writes (appendfsync everysec) -- the same as for the stream. On a Redis
Cluster the script's keys must share a slot: the records go to a shard of
their own in the list's slot (``<stream_key>:{<list_key>}``, or the list
key's own hash tag), numbered by ``<that shard>:collector-seq``, and the
pump's workers read that shard beside the daemon's.
"""

from __future__ import annotations

import threading

import redis

from collector.common.log import RateLimited, get_logger
from collector.common.stream import list_shard_key, lua_xadd_entry, shard_for

from .config import PumpConfig

log = get_logger(__name__)

def move_script(fmt: str | None) -> str:
    """The Lua moving up to ARGV[1] records of list KEYS[1] into stream KEYS[2] as one
    entry of ring ARGV[2] (records of format ``fmt``), numbered by counter KEYS[3]."""
    xadd = lua_xadd_entry("KEYS[2]", "ARGV[2]", "tostring(first)", "tostring(n)",
                          "cmsgpack.pack(recs)", fmt)
    return f"""
local recs = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local n = #recs
if n == 0 then return 0 end
redis.call('LTRIM', KEYS[1], n, -1)
local first = redis.call('INCRBY', KEYS[3], n) - n
{xadd}
return n
"""


def list_ring_id(list_key: str) -> str:
    return f"list-{list_key}"


class ListMover:
    """Moves records from the seed's list into the stream until stopped."""

    def __init__(self, config: PumpConfig, r: redis.Redis) -> None:
        src = config.source
        self.list_key = src.list_key
        self.batch = src.list_batch_size
        self.ring = list_ring_id(src.list_key)
        if config.cluster():
            self.stream = list_shard_key(config.stream_key, src.list_key)
            self.seq_key = f"{self.stream}:collector-seq"
        else:
            keys = config.shard_keys()
            self.stream = keys[shard_for(self.ring, len(keys))]
            self.seq_key = f"{src.list_key}:collector-seq"
        self.interval = config.read_block_s
        self.r = r
        self.script = r.register_script(move_script(None if src.format == "raw" else src.format))
        self.stop = threading.Event()
        self.moved = 0
        self.limited = RateLimited(10.0, log)

    def move_once(self) -> int:
        n = int(self.script(keys=[self.list_key, self.stream, self.seq_key],
                            args=[self.batch, self.ring]))
        self.moved += n
        return n

    def run(self) -> None:
        log.info("Moving records from the seed's list into the stream.",
                 list=self.list_key, stream=self.stream)
        while not self.stop.is_set():
            try:
                if self.move_once() >= self.batch:
                    continue
            except redis.RedisError as exc:
                self.limited.warning("move", "Moving the list failed; retrying.",
                                     list=self.list_key, error=exc)
            self.stop.wait(self.interval)
