"""Dead letters: what a sink's worker gave up on, kept with what a replay needs.

Each sink has its own dead-letter stream per shard, ``<shard key>:dead:<sink>``
(:func:`dead_letter_key`). One entry there is one record, except for a stream
entry that does not decode at all (it has no records to tell apart). It holds

- a stream entry in the format of ``collector/common/stream.py`` (``v``,
  ``ring``, ``seq``, ``n``, ``recs``, and ``fmt`` when the records have a
  format): for a record, an entry of that one record with its original
  bytes and its own sequence number, so its record id stays the same; for an
  entry that does not decode, its fields exactly as they were. Without the
  ``dl_*`` fields it is an entry the pump reads again: ``collector
  dead-letters replay`` XADDs it to the shard with ``replay_for: <sink>``, so
  only that sink's group writes it;
- ``dl_sink``, ``dl_reason`` (a :class:`DeadReason`), ``dl_error`` (the
  error text, at most 4,000 characters), ``dl_stream`` and ``dl_entry_id``
  (where it was read), ``dl_record_id`` (empty for an undecodable entry),
  ``dl_deliveries`` (how often Redis had delivered the entry to the sink's
  group), ``dl_first_failure_ms`` and ``dl_last_failure_ms`` (Unix ms: when
  this worker first saw the entry fail, and when it gave up), ``dl_v`` (the
  version of these ``dl_*`` fields, ``1``).

Each dead-letter stream holds at most ``dead_letter_max_entries`` entries:
the same ``MULTI`` trims it exactly (``XTRIM MAXLEN``), dropping the oldest,
and every dead letter dropped is counted (``dead_letters_dropped`` per sink
in ``/metrics``) and logged.

Writing the dead letters, trimming their stream and acknowledging the
entries they come from is one ``MULTI``: a crash leaves either all or none.
An entry redelivered after its dead letters were written but before its
other records were acknowledged writes them again: replay by
``dl_record_id``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from collector.common.counters import Slot
from collector.common.log import RateLimited, get_logger
from collector.common.stream import decode_entry, encode_entry

log = get_logger(__name__)

__all__ = ["DeadItem", "DeadLetters", "DeadReason", "dead_letter_key", "record_item"]

_MAX_ERROR_CHARS = 4000
#: The fields a dead letter adds to the entry it holds.
DL_FIELDS = ("dl_sink", "dl_reason", "dl_error", "dl_stream", "dl_entry_id", "dl_record_id",
             "dl_deliveries", "dl_first_failure_ms", "dl_last_failure_ms", "dl_v")
DL_VERSION = "1"


class DeadReason(StrEnum):
    """Why something was dead-lettered (the ``dl_reason`` field)."""

    UNDECODABLE_ENTRY = "undecodable_entry"    # the stream entry is not in the format
    UNDECODABLE_RECORD = "undecodable_record"  # a record is not a msgpack map we can read
    UNCONVERTIBLE_RECORD = "unconvertible_record"  # not what its format says (pump/iam)
    REJECTED = "rejected"                      # the sink named the record as refused
    PERMANENT = "permanent"                    # the record alone fails with a permanent error
    MAX_DELIVERIES = "max_deliveries"          # the record alone kept failing, sink healthy


@dataclass(slots=True)
class DeadItem:
    """Something to put on the dead-letter stream: the fields to write and why."""

    fields: Mapping[Any, Any]
    reason: DeadReason
    error: str
    entry_id: str
    record_id: str = ""
    first_failure: float | None = None  # time.time() of the first failure, if known


def dead_letter_key(shard_key: str, sink: str) -> str:
    """The dead-letter stream of ``sink`` for entries of ``shard_key``."""
    return f"{shard_key}:dead:{sink}"


def record_item(entry_fields: Mapping[Any, Any], entry_id: str, record_id: str,
                reason: DeadReason, error: str, first_failure: float | None = None
                ) -> DeadItem:
    """The dead letter of one record of a (decodable) stream entry, with its original bytes."""
    entry = decode_entry(entry_fields)  # type: ignore[arg-type]
    i = entry.ids().index(record_id)
    fields = encode_entry(entry.ring, entry.first_seq + i, [entry.records[i]], entry.fmt)
    return DeadItem(fields, reason, error, entry_id, record_id, first_failure)


class DeadLetters:
    """Writes one sink's dead letters (see the module docstring)."""

    def __init__(self, r: redis.Redis, sink: str, group: str, counters: Slot,
                 max_entries: int = 10_000, limited: RateLimited | None = None) -> None:
        self.r = r
        self.sink = sink
        self.group = group
        self.counters = counters
        self.max_entries = max_entries
        self.limited = limited or RateLimited(10.0, log)

    def write(self, key: str, items: Sequence[DeadItem], ack: Sequence[str],
              deliveries: Mapping[str, int] | None) -> None:
        """Write ``items`` to ``key``'s dead-letter stream and ack ``ack``, in one MULTI."""
        pipe = self.r.pipeline(transaction=True)
        dl_key = dead_letter_key(key, self.sink)
        now_ms = str(int(time.time() * 1000))
        for it in items:
            fields = dict(it.fields)
            first = now_ms if it.first_failure is None else str(int(it.first_failure * 1000))
            fields.update(zip(DL_FIELDS, (
                self.sink, it.reason.value, it.error[:_MAX_ERROR_CHARS], key, it.entry_id,
                it.record_id, str((deliveries or {}).get(it.entry_id, 1)), first, now_ms,
                DL_VERSION), strict=True))
            pipe.xadd(dl_key, fields)
        if items:
            pipe.xtrim(dl_key, maxlen=self.max_entries, approximate=False)
        if ack:
            pipe.xack(key, self.group, *ack)
        results = pipe.execute()
        if ack:
            self.counters.add("entries_acked", len(ack))
        if items:
            self.counters.add("records_dead_lettered", len(items))
            dropped = int(results[len(items)])
            if dropped:
                self.counters.add("dead_letters_dropped", dropped)
                self.limited.warning(
                    "dl-dropped", "Dead-letter stream full; dropped its oldest dead letters.",
                    sink=self.sink, stream=dl_key, dropped=dropped,
                    dead_letter_max_entries=self.max_entries)
