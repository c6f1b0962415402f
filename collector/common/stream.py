"""The Redis stream contract between ``collector-daemon`` and ``collector-pump``.

Layout
------
Records live in ``shards`` Redis streams. With one shard the key is exactly
``stream_key`` (default ``collector:analytics``); with N > 1 shards, shard
``i`` is ``f"{stream_key}:{{{i}}}"``, e.g. ``collector:analytics:{0}``. The
``{i}`` hash tag puts each shard in its own Redis Cluster slot so a cluster
can spread them. A flusher writes the batches of one ring to one shard
(``shard_for(ring_id, shards)``), so a ring's records stay in order.

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

Record ``i`` of an entry has the stable id ``f"{ring}:{seq + i}"``
(:func:`record_id`). Ring ids are random per ring and sequence numbers
count up within a ring, so a redelivered batch carries the same ids and a
sink can drop what it has already stored.

Encoding the array costs one C call over byte strings; a record that does
not decode does not spoil its neighbours.
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
RECORD_FORMATS = ("iam", "auto")

_packb = msgpack.Packer(use_bin_type=True).pack


def shard_keys(stream_key: str = DEFAULT_STREAM_KEY, shards: int = 1) -> list[str]:
    """The Redis keys of every shard."""
    if shards < 1:
        raise ValueError(f"shards={shards} must be at least 1")
    if shards == 1:
        return [stream_key]
    return [f"{stream_key}:{{{i}}}" for i in range(shards)]


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
