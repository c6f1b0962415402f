"""The Redis stream contract between ``collector-daemon`` and ``collector-pump``.

Layout
------
Records live in ``shards`` Redis streams. With one shard the key is exactly
``stream_key`` (default ``collector:analytics``); with N > 1 shards, shard
``i`` is ``f"{stream_key}:{{{i}}}"``, e.g. ``collector:analytics:{0}``. The
``{i}`` hash tag puts each shard in its own Redis Cluster slot so a cluster
can spread them. On a Redis Cluster (``cluster=True``) every shard has a
hash tag, also a single one, and shard ``i``'s tag is the smallest number
whose slot lies in the ``i``-th of ``shards`` equal parts of the 16384
slots (:func:`cluster_tag`; 3 shards: ``{3}``, ``{1}``, ``{0}``), so the
shards spread over the masters as evenly as the slots do (``redis-cli
--cluster create`` gives each master an equal range); a shard's dead-letter
stream (``<shard>:dead:<sink>``) shares its slot. The daemon gives a ring to
shard ``ring number % shards`` (rings are numbered as the daemon finds
them), so rings spread evenly; one ring's batches all go to its shard.

One stream entry is one batch from one ring, with these fields::

    v      b"1"                      format version of the entry
    ring   ring id (32 hex chars)    the ring the records came from
    seq    first sequence number     decimal ASCII
    n      number of records         decimal ASCII
    recs   msgpack array of bin      each element is one record's own
                                     msgpack bytes, exactly as record_hit
                                     encoded it (never decoded by the daemon)
    fmt    (optional) record format  absent: records as record_hit wrote them;
                                     ``iam`` / ``auto``: records from
                                     iam-authz-server (the pump's list source,
                                     ``pump/iam/``), converted by the pump
    replay_for  (optional) a sink    a dead letter put back by ``collector
                                     dead-letters replay``: only that sink's
                                     group writes it, every other group
                                     acknowledges it without writing

Record ``i`` of an entry has the stable id ``f"{ring}:{seq + i}"``
(:func:`record_id`). Ring ids are random per ring and sequence numbers
count up within a ring, so a redelivered batch carries the same ids and a
sink can drop what it has already stored.

Encoding the array costs one C call over byte strings; a record that does
not decode does not spoil its neighbours. The daemon never builds the array
as one object: it reads the records out of a ring already as msgpack bins
(``ringbuf.RingReader.read_packed``), and the entry's ``recs`` is the array
header followed by those bytes, sent to Redis as they are
(:func:`encode_packed_entry`): the same bytes :func:`encode_entry` makes.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

FORMAT_VERSION = b"1"
DEFAULT_STREAM_KEY = "collector:analytics"
#: The fields of an entry, in the order they are written (then the optional ``fmt``).
ENTRY_FIELDS = ("v", "ring", "seq", "n", "recs")
#: The optional field naming the one sink (consumer group) a replayed entry is for.
REPLAY_FOR = "replay_for"
RECORD_FORMATS = ("iam", "auto")

_packb = msgpack.Packer(use_bin_type=True).pack


SLOTS = 16384  # Redis Cluster hash slots


def shard_keys(stream_key: str = DEFAULT_STREAM_KEY, shards: int = 1, *,
               cluster: bool = False) -> list[str]:
    """The Redis keys of every shard (``cluster``: for a Redis Cluster, see above)."""
    if shards < 1:
        raise ValueError(f"shards={shards} must be at least 1")
    if cluster:
        return [f"{stream_key}:{{{cluster_tag(i, shards)}}}" for i in range(shards)]
    if shards == 1:
        return [stream_key]
    return [f"{stream_key}:{{{i}}}" for i in range(shards)]


def key_slot(key: str) -> int:
    """The Redis Cluster slot of ``key`` (CRC16 of its hash tag, or of it all)."""
    from redis.crc import key_slot as _slot

    return int(_slot(key.encode()))


def cluster_tag(i: int, shards: int) -> int:
    """The hash tag of shard ``i`` of ``shards`` on a cluster: the smallest number
    whose slot is in ``[i * SLOTS / shards, (i + 1) * SLOTS / shards)``."""
    lo, hi = i * SLOTS // shards, (i + 1) * SLOTS // shards
    k = 0
    while not lo <= key_slot(f"{{{k}}}") < hi:
        k += 1
    return k


def hash_tag(key: str) -> str | None:
    """The hash tag of ``key`` (what lies between its first ``{`` and the next ``}``,
    if not empty), else None: Redis Cluster hashes only the tag."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return None


def list_shard_key(stream_key: str, list_key: str) -> str:
    """On a cluster, the stream shard the pump's list source writes: in the list's own
    slot (``<stream_key>:{<list's tag or whole name>}``), so its Lua moves records in one
    slot; the pump reads it beside the daemon's shards."""
    return f"{stream_key}:{{{hash_tag(list_key) or list_key}}}"


def shard_for(ring_id: str, shards: int) -> int:
    """The shard a ring's batches go to (stable across processes and restarts)."""
    return zlib.crc32(ring_id.encode()) % shards


def encode_entry(ring_id: str, first_seq: int, records: Sequence[bytes],
                 fmt: str | None = None) -> dict[str, bytes]:
    """The fields of one stream entry for a batch of raw msgpack records."""
    values = (FORMAT_VERSION, ring_id.encode(), str(first_seq).encode(),
              str(len(records)).encode(), _packb(list(records)))
    fields = dict(zip(ENTRY_FIELDS, values, strict=True))
    if fmt:
        fields["fmt"] = _record_format(fmt).encode()
    return fields


def array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` elements (what ``recs`` starts with)."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_packed_entry(ring_id: str, first_seq: int, n: int,
                        packed: Sequence[bytes]) -> dict[str, bytes | list[bytes]]:
    """:func:`encode_entry` for ``n`` records already packed as msgpack bins, in order,
    in the byte strings ``packed`` (``ringbuf.PackedBatch.parts``): ``recs`` is the
    list of the array header and those byte strings, to be sent one after the
    other (``collector.daemon._xadd``); joined they are :func:`encode_entry`'s."""
    return {"v": FORMAT_VERSION, "ring": ring_id.encode(), "seq": str(first_seq).encode(),
            "n": str(n).encode(), "recs": [array_header(n), *packed]}


def lua_xadd_entry(key: str, ring: str, seq: str, n: str, recs: str,
                   fmt: str | None = None) -> str:
    """A Lua ``XADD`` of one entry in the format above, for scripts that make entries
    inside Redis (the pump's list source). The arguments are Lua expressions: the
    stream key, the ring id, the first sequence number and the record count as
    strings, and ``recs`` as the packed array (``cmsgpack.pack`` of the records);
    ``fmt`` is the records' format (a Python string, not an expression)."""
    values = (f"'{FORMAT_VERSION.decode()}'", ring, seq, n, recs)
    args = ", ".join(f"'{name}', {value}" for name, value in zip(ENTRY_FIELDS, values,
                                                                  strict=True))
    if fmt:
        args += f", 'fmt', '{_record_format(fmt)}'"
    return f"redis.call('XADD', {key}, '*', {args})"


def _record_format(fmt: str) -> str:
    if fmt not in RECORD_FORMATS:
        raise ValueError(f"record format {fmt!r} is not one of {', '.join(RECORD_FORMATS)}")
    return fmt


def parse_entry_id(entry_id: str) -> tuple[int, int]:
    """A Redis stream id ``<ms>-<seq>`` as a pair that sorts like the ids;
    ``(0, 0)`` for anything that is not one."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


class BadEntry(ValueError):
    """A stream entry that does not follow the format above."""


@dataclass(frozen=True, slots=True)
class Entry:
    ring: str
    first_seq: int
    records: list[bytes]  # raw msgpack bytes of each record
    fmt: str = ""  # the records' format: "" (record_hit's), "iam" or "auto"

    def ids(self) -> list[str]:
        """The record id of each record, in order."""
        # record_id's format in one C-level pass (no Python call per id)
        prefix, first = f"{self.ring}:", self.first_seq
        return list(map(prefix.__add__, map(str, range(first, first + len(self.records)))))


_BYTES_ONLY = {bytes}


def record_id(ring: str, seq: int) -> str:
    """The stable id of record ``seq`` of ring ``ring``."""
    return f"{ring}:{seq}"


def decode_entry(fields: dict[bytes, bytes] | dict[str, bytes]) -> Entry:
    """Parse an entry's fields; raise :class:`BadEntry` if they are malformed."""
    def get(name: str) -> bytes:
        value = fields.get(name.encode())  # type: ignore[call-overload]
        if value is None:
            value = fields.get(name)  # type: ignore[call-overload]
        if value is None:
            raise BadEntry(f"stream entry has no {name!r} field")
        return value

    version = get("v")
    if version != FORMAT_VERSION:
        raise BadEntry(f"stream entry has format version {version!r}; expected {FORMAT_VERSION!r}")
    try:
        ring = get("ring").decode()
        first = int(get("seq"))
        n = int(get("n"))
        recs = msgpack.unpackb(get("recs"), raw=True, use_list=True)
    except (ValueError, UnicodeDecodeError, msgpack.ExtraData,
            msgpack.FormatError, msgpack.StackError) as exc:
        raise BadEntry(f"stream entry does not decode: {exc}") from exc
    if not isinstance(recs, list) or len(recs) != n or (recs and {*map(type, recs)} != _BYTES_ONLY):
        raise BadEntry(f"stream entry 'recs' is not an array of {n} byte strings")
    fmt = fields.get(b"fmt", fields.get("fmt", b""))  # type: ignore[call-overload]
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    if fmt and fmt not in RECORD_FORMATS:
        raise BadEntry(f"stream entry has record format {fmt!r}; known: "
                       f"{', '.join(RECORD_FORMATS)}")
    return Entry(ring, first, recs, fmt)


def default_runtime_dir() -> Path:
    """Where the daemon keeps its private Redis (socket, data) by default."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "collector"
    return Path(f"/tmp/collector-{os.geteuid()}")


SOCKET_NAME = "redis.sock"  # the embedded Redis's socket in its runtime directory


def default_redis_url() -> str:
    """The URL of the daemon's embedded Redis (used when no redis_url is set)."""
    return f"unix://{default_runtime_dir() / SOCKET_NAME}"
