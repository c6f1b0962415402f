"""Dead letters: what a sink's worker gave up on, kept with what a replay needs.

Each sink has its own dead-letter stream per shard, ``<shard key>:dead:<sink>``
(:func:`dead_letter_key`). One entry there holds

- the stream entry's own fields (``v``, ``ring``, ``seq``, ``n``, ``recs``;
  ``collector/common/stream.py``): for an entry that does not decode, its
  fields exactly as they were; for a record that does not decode, an entry
  of that one record with its original bytes and its own sequence number;
  for a rejected entry, the whole entry. Without the ``dl_*`` fields it is an
  entry the pump can read again (XADD it to the shard to replay it);
- ``dl_sink``, ``dl_reason`` (a :class:`DeadReason`), ``dl_error`` (the
  error text, at most 4,000 characters), ``dl_stream`` and ``dl_entry_id``
  (where it was read), ``dl_deliveries`` (how often Redis delivered the entry
  to the sink's group).

Writing the dead letters and acknowledging what they replace is one
``MULTI``: a crash leaves either both or neither.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from collector.common.counters import Slot

__all__ = ["DeadItem", "DeadLetters", "DeadReason", "dead_letter_key"]

_MAX_ERROR_CHARS = 4000


class DeadReason(StrEnum):
    """Why something was dead-lettered (the ``dl_reason`` field)."""

    UNDECODABLE_ENTRY = "undecodable_entry"    # the stream entry is not in the format
    UNDECODABLE_RECORD = "undecodable_record"  # one record is not a msgpack map
    UNCONVERTIBLE_RECORD = "unconvertible_record"  # not what its format says (pump/iam)
    PERMANENT = "permanent"                    # the sink said it can never take it
    MAX_DELIVERIES = "max_deliveries"          # failed max_deliveries times, sink healthy


@dataclass(slots=True)
class DeadItem:
    """Something to put on the dead-letter stream: the fields to write and why."""

    fields: Mapping[Any, Any]
    reason: DeadReason
    error: str
    entry_id: str


def dead_letter_key(shard_key: str, sink: str) -> str:
    """The dead-letter stream of ``sink`` for entries of ``shard_key``."""
    return f"{shard_key}:dead:{sink}"


class DeadLetters:
    """Writes one sink's dead letters (see the module docstring)."""

    def __init__(self, r: redis.Redis, sink: str, group: str, counters: Slot) -> None:
        self.r = r
        self.sink = sink
        self.group = group
        self.counters = counters

    def write(self, key: str, items: Sequence[DeadItem], ack: Sequence[str],
              deliveries: Mapping[str, int] | None, *, records: int) -> None:
        """Write ``items`` to ``key``'s dead-letter stream and ack ``ack``, in one MULTI.

        ``records`` is how many records the items hold (counted as dead-lettered).
        """
        pipe = self.r.pipeline(transaction=True)
        dl_key = dead_letter_key(key, self.sink)
        for it in items:
            fields = dict(it.fields)
            fields.update({
                "dl_sink": self.sink, "dl_reason": it.reason.value,
                "dl_error": it.error[:_MAX_ERROR_CHARS], "dl_stream": key,
                "dl_entry_id": it.entry_id,
                "dl_deliveries": str((deliveries or {}).get(it.entry_id, 1)),
            })
            pipe.xadd(dl_key, fields)
        if ack:
            pipe.xack(key, self.group, *ack)
        pipe.execute()
        if ack:
            self.counters.add("entries_acked", len(ack))
        if records:
            self.counters.add("records_dead_lettered", records)
