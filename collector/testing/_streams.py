"""The Redis stream as the daemon writes it and the pump reads it: fill, read back, lag."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import msgpack
import redis

from collector.common.stream import (
    DEFAULT_STREAM_KEY,
    decode_entry,
    encode_entry,
    record_id,
    shard_keys,
)

from ._records import authz_record, record_key

__all__ = ["StreamRecord", "fill_stream", "group_lags", "stream_entries", "stream_record_count",
           "stream_records", "tally_stream"]


class StreamRecord(NamedTuple):
    """One record of a stream entry: its id ``<ring>:<seq>`` and decoded contents."""

    id: str
    ring: str
    seq: int
    data: Any


def _keys(keys: Iterable[str] | None) -> list[str]:
    return list(keys) if keys is not None else shard_keys()


def stream_entries(client: redis.Redis, keys: Iterable[str] | None = None,
                   page: int = 1000) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """Every ``(entry id, fields)`` of the stream shards ``keys`` (default: the one stream)."""
    for key in _keys(keys):
        start = "-"
        while True:
            entries = client.xrange(key, min=start, max="+", count=page)
            if not entries:
                break
            yield from entries
            last = entries[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else last)


def stream_record_count(client: redis.Redis, keys: Iterable[str] | None = None) -> int:
    """Records held in the shards: the sum of every entry's ``n``, nothing decoded."""
    return sum(int(fields.get(b"n", b"0")) for _, fields in stream_entries(client, keys))


def stream_records(client: redis.Redis, keys: Iterable[str] | None = None
                   ) -> Iterator[StreamRecord]:
    """Every record in the shards, decoded (msgpack), with its record id."""
    for _eid, fields in stream_entries(client, keys, page=500):
        entry = decode_entry(fields)
        for i, raw in enumerate(entry.records):
            seq = entry.first_seq + i
            yield StreamRecord(record_id(entry.ring, seq), entry.ring, seq,
                               msgpack.unpackb(raw, raw=False))


def tally_stream(client: redis.Redis, keys: Iterable[str] | None = None, *,
                 check: bool = True,
                 record: Callable[[int, int], dict[str, Any]] = authz_record
                 ) -> Counter[tuple[int, int]]:
    """Records made by :func:`authz_record` in the shards, counted by ``(producer, seq)``.

    With ``check`` every record must equal ``record(producer, seq)`` and sit
    at ring sequence ``seq`` (one ring per producer, written from 0).
    """
    seen: Counter[tuple[int, int]] = Counter()
    for rec in stream_records(client, keys):
        key = record_key(rec.data)
        if check:
            assert rec.data == record(*key), f"record {key} decodes to {rec.data}"
            assert rec.seq == key[1], f"record {key} has the ring sequence {rec.seq}"
        seen[key] += 1
    return seen


def _packed_authz(seq: int) -> bytes:
    return msgpack.packb(authz_record(0, seq), use_bin_type=True)


def fill_stream(client: redis.Redis, n: int, *, key: str = DEFAULT_STREAM_KEY,
                per_entry: int = 100, start: int = 0, ring: str = "a" * 32,
                record: Callable[[int], bytes] = _packed_authz) -> list[int]:
    """XADD ``n`` records ``record(seq)``, seq ``start..start+n-1``, ``per_entry`` an entry.

    The entries are what the daemon writes for ring ``ring`` (so record ids
    are ``<ring>:<seq>``); returns the sequence numbers written.
    """
    pipe = client.pipeline(transaction=False)
    for first in range(start, start + n, per_entry):
        recs = [record(s) for s in range(first, min(first + per_entry, start + n))]
        pipe.xadd(key, encode_entry(ring, first, recs))
        if len(pipe) >= 200:
            pipe.execute()
    pipe.execute()
    return list(range(start, start + n))


def group_lags(client: redis.Redis, keys: Iterable[str] | None = None) -> dict[str, int]:
    """Per consumer group, over the shards: entries not yet delivered plus entries pending.

    Measured by the pump's own ``group_lag`` (which does not trust a stale
    XINFO ``lag`` after a restart); 0 means the group has read and
    acknowledged everything.
    """
    from pump._redis import group_info, group_lag

    out: dict[str, int] = {}
    for key in _keys(keys):
        for g in group_info(client, key):
            name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
            lag, pending = group_lag(client, key, name)
            out[name] = out.get(name, 0) + lag + pending
    return out
