"""Per-record delivery, the part of :class:`pump._delivery.Delivery` that finds and
dead-letters the records a sink cannot take (the rules: ``pump/_delivery.py``).

A batch the sink refuses without naming records is written again in ever smaller
parts: whole entries first, then halves of an entry, down to single records. A
record that fails alone is dead-lettered and the others are written; every record
of a batch of several failing alone is an outage, not poison.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from collector.common.counters import Slot
from collector.common.log import RateLimited, get_logger

from ._deadletter import DeadItem, DeadLetters, DeadReason, record_item
from ._pipeline import EntryRecords
from ._retry import WriteFailed
from ._stop import Stopper
from .sinks import Batch, OutageError, PermanentError, Record, Records

log = get_logger(__name__)

#: A part of a batch: (entry, its records in the part) pairs.
Part = list[tuple[EntryRecords, Records]]


class Isolated(Enum):
    DONE = "done"        # every record written or dead-lettered, entries acknowledged
    OUTAGE = "outage"    # every record failed alone: not poison
    ABORTED = "aborted"  # stopped, or the sink went down on the way: entries stay pending


class PerRecord:
    """Isolating and dead-lettering records; :class:`pump._delivery.Delivery` is one,
    and sets what is declared here."""

    sink_name: str
    counters: Slot
    stopper: Stopper
    limited: RateLimited
    dead: DeadLetters
    first_failure: dict[str, float]  # entry id -> time.time() it first failed
    done: set[str]  # entries delivered or dead-lettered (the spool's commit)

    def write(self, batch: Batch, *, single_attempt: bool = False) -> None:
        raise NotImplementedError

    def _rejected(self, key: str, entries: Sequence[EntryRecords], rejected: dict[str, str],
                  deliveries: dict[str, int] | None) -> None:
        """The sink wrote every record but ``rejected``: dead-letter those, ack the rest."""
        items = []
        n = 0
        for e in entries:
            for rec in e.records:
                n += 1
                why = rejected.get(rec.id)
                if why is not None:
                    items.append(self._item(e, rec, DeadReason.REJECTED, why))
        self._finish(key, entries, items, n - len(items), deliveries)

    def isolate(self, key: str, entries: list[EntryRecords],
                deliveries: dict[str, int] | None, reason: DeadReason) -> Isolated:
        """Find the records that fail alone by writing ever smaller parts (module doc)."""
        single = reason is DeadReason.MAX_DELIVERIES  # one attempt per part
        total = sum(len(e.records) for e in entries)
        todo: list[Part] = [[(e, e.records) for e in entries]]
        bad: list[DeadItem] = []
        written = 0
        tries = 0
        while todo:
            if self.stopper.is_set():
                return Isolated.ABORTED
            part = todo.pop()
            n = sum(len(recs) for _, recs in part)
            tries += 1
            try:
                self.write(_part_batch(key, part), single_attempt=single)
                written += n
                continue
            except PermanentError as exc:
                if exc.rejected:
                    for e, recs in part:
                        bad += [self._item(e, r, DeadReason.REJECTED, exc.rejected[r.id])
                                for r in recs if r.id in exc.rejected]
                    written += n - sum(1 for e, recs in part for r in recs
                                       if r.id in exc.rejected)
                    continue
                error: BaseException = exc
            except WriteFailed as exc:
                if isinstance(exc.error, OutageError) or not single:
                    return Isolated.ABORTED  # the sink went down: not this part's fault
                error = exc.error
            if n == 1:
                e, recs = part[0]
                bad.append(self._item(e, recs[0], reason, str(error)))
            else:
                todo.extend(reversed(_halves(part)))
        if total > 1 and len(bad) == total:
            return Isolated.OUTAGE
        log.info("Isolated the records a batch failed for.", sink=self.sink_name,
                 records=total, dead_lettered=len(bad), writes=tries)
        self._finish(key, entries, bad, written, deliveries)
        return Isolated.DONE

    def _item(self, e: EntryRecords, rec: Record, reason: DeadReason, error: str) -> DeadItem:
        return record_item(e.fields, e.entry_id, rec.id, reason, error,
                           self.first_failure.get(e.entry_id))

    def _finish(self, key: str, entries: Sequence[EntryRecords], items: list[DeadItem],
                written: int, deliveries: dict[str, int] | None) -> None:
        """Dead-letter ``items`` and acknowledge ``entries`` (one MULTI)."""
        ids = [e.entry_id for e in entries]
        self.dead.write(key, items, ids, deliveries)
        self.counters.add("records_out", written)
        for eid in ids:
            self.first_failure.pop(eid, None)
        self.done.update(ids)
        if items:
            self.limited.warning("dead", "Dead-lettered records the sink cannot take.",
                                 sink=self.sink_name, stream=key, records=len(items),
                                 delivered=written, reason=items[0].reason.value,
                                 error=items[0].error)


def _part_batch(key: str, part: Part) -> Batch:
    """A part's batch. Entry ids only when it holds whole entries: a sink that records
    the entries it applied (aggregate) must not take part of an entry for all of it."""
    chunks = [recs for _, recs in part]
    if all(recs is e.records for e, recs in part):
        return Batch(chunks=chunks, stream=key, entry_ids=[e.entry_id for e, _ in part],
                     entry_sizes=[len(recs) for _, recs in part])
    return Batch(chunks=chunks, stream=key)


def _halves(part: Part) -> list[Part]:
    """Whole entries split first, then the records of one entry."""
    if len(part) > 1:
        mid = len(part) // 2
        return [part[:mid], part[mid:]]
    e, recs = part[0]
    mid = len(recs) // 2
    return [[(e, recs[:mid])], [(e, recs[mid:])]]
