"""Stream entries -> sink records: decode, convert iam's records, filter, omit
detail, trim.

This is the per-record hot path of a worker; it avoids Python work beyond
one ``ormsgpack.unpackb`` (Rust; ``msgpack.unpackb`` for the records it
rejects, such as maps with non-string keys; ``pump/sinks/_values.py``) and
the steps that are configured. A record that cannot be decoded or converted
becomes a dead letter of its own (``pump/_deadletter.py``); its neighbours go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from collector.common.log import get_logger
from collector.common.stream import BadEntry, Entry, decode_entry, encode_entry

from ._deadletter import DeadItem, DeadReason
from .config import Filters
from .iam.record import NotAnIamRecord, is_iam, to_iam
from .sinks._base import Record
from .sinks._values import UndecodableRecord, pack_record, unpack_record

log = get_logger(__name__)

#: Records a filter field may be missing from before the pipeline warns about it.
FILTER_FIELD_PROBE = 100

Fields = dict[Any, Any]


class EntryRecords(NamedTuple):
    """One stream entry with records for the sink."""

    entry_id: str
    records: list[Record]  # what is left after filters, in the entry's order
    fields: Fields         # the entry's original fields (for its dead letter)


@dataclass(slots=True)
class Prepared:
    """The result of preparing one shard's entries for a sink."""

    entries: list[EntryRecords] = field(default_factory=list)
    ack_only: list[str] = field(default_factory=list)  # entries with nothing left to write
    dead: list[DeadItem] = field(default_factory=list)
    n_in: int = 0
    n_filtered: int = 0
    n_trimmed: int = 0
    n_decode_errors: int = 0

    def records(self) -> list[Record]:
        """Every record to write, in order."""
        return [r for e in self.entries for r in e.records]

    def entry_ids(self) -> list[str]:
        return [e.entry_id for e in self.entries]


def compile_filter(filters: Filters) -> Callable[[dict[str, Any]], bool] | None:
    """A predicate for the sink's filters, or None when every record passes."""
    if not filters.active:
        return None
    include, exclude = filters.effective()
    inc = tuple(include.items())
    exc = tuple(exclude.items())

    def keep(data: dict[str, Any]) -> bool:
        get = data.get
        try:
            for name, values in inc:
                if get(name) not in values:
                    return False
            for name, values in exc:
                if get(name) in values:
                    return False
        except TypeError:  # an unhashable value matches no listed value
            return not inc
        return True

    return keep


def trim_record(data: dict[str, Any], raw: bytes, limit: int) -> tuple[dict[str, Any], bytes]:
    """Cut the longest top-level string fields until the record packs to <= ``limit`` bytes.

    Returns the new fields and their msgpack bytes. A record whose bulk is not
    in top-level strings may stay above the limit; it is still handed on.
    """
    for _ in range(8):
        excess = len(raw) - limit
        if excess <= 0:
            break
        strings = sorted(
            ((k, v) for k, v in data.items() if isinstance(v, (str, bytes)) and v),
            key=lambda kv: -len(kv[1]),
        )
        if not strings:
            break
        for key, value in strings:
            if excess <= 0:
                break
            cut = min(len(value), excess)  # a char is at least one byte
            data[key] = value[: len(value) - cut]
            excess -= cut
        raw = pack_record(data)
    return data, raw


class RecordPipeline:
    """Per-sink settings applied to every record, in the seed's order."""

    def __init__(self, filters: Filters, *, omit: bool, detail_fields: Sequence[str],
                 max_record_size: int | None, sink: str = "") -> None:
        self.keep = compile_filter(filters)
        self.omit_fields = tuple(detail_fields) if omit else ()
        self.max_record_size = max_record_size
        self.sink = sink
        include, exclude = filters.effective()
        # Filter fields not seen in any record yet (warned about after FILTER_FIELD_PROBE).
        self._unseen = set(include) | set(exclude)
        self._probed = 0

    def prepare(self, entries: Sequence[tuple[Any, Fields]]) -> Prepared:
        out = Prepared()
        plain = self.keep is None and not self.omit_fields and self.max_record_size is None
        for eid_raw, fields in entries:
            eid = eid_raw.decode() if isinstance(eid_raw, bytes) else eid_raw
            try:
                entry = decode_entry(fields)
            except BadEntry as exc:
                out.n_decode_errors += 1
                out.dead.append(DeadItem(dict(fields), DeadReason.UNDECODABLE_ENTRY, str(exc),
                                         eid))
                continue
            out.n_in += len(entry.records)
            recs = None
            if plain and not entry.fmt:
                recs = _plain_records(entry)
            if recs is None:
                recs = self._records(entry, eid, out)
            if recs:
                out.entries.append(EntryRecords(eid, recs, fields))
            else:
                out.ack_only.append(eid)
        if self._unseen and self.keep is not None:
            self._probe_filter_fields(out)
        return out

    def _records(self, entry: Entry, eid: str, out: Prepared) -> list[Record]:
        """The entry's records one by one: decode, convert, filter, omit, trim."""
        keep = self.keep
        omit_fields = self.omit_fields
        limit = self.max_record_size
        fmt = entry.fmt
        ids = entry.ids()
        first = entry.first_seq
        recs = []
        for i, raw in enumerate(entry.records):
            try:
                data = unpack_record(raw)
                if type(data) is not dict:
                    raise UndecodableRecord(
                        f"record is a msgpack {type(data).__name__}, not a map")
            except UndecodableRecord as exc:
                out.n_decode_errors += 1
                out.dead.append(DeadItem(encode_entry(entry.ring, first + i, [raw], fmt),
                                         DeadReason.UNDECODABLE_RECORD, str(exc), eid, ids[i]))
                continue
            changed = False
            if fmt == "iam" or (fmt == "auto" and is_iam(data)):
                try:
                    data = to_iam(data)
                except NotAnIamRecord as exc:
                    out.n_decode_errors += 1
                    out.dead.append(DeadItem(encode_entry(entry.ring, first + i, [raw], fmt),
                                             DeadReason.UNCONVERTIBLE_RECORD, str(exc), eid,
                                             ids[i]))
                    continue
                changed = True
            if keep is not None:
                if self._unseen:
                    self._unseen.difference_update(data)
                if not keep(data):
                    out.n_filtered += 1
                    continue
            if omit_fields:
                for name in omit_fields:
                    if data.get(name):
                        data[name] = ""
                        changed = True
            if changed:
                raw = pack_record(data)
            if limit is not None and len(raw) > limit:
                data, raw = trim_record(data, raw, limit)
                out.n_trimmed += 1
            recs.append(Record(ids[i], data, raw))
        return recs

    def _probe_filter_fields(self, out: Prepared) -> None:
        if self._probed >= FILTER_FIELD_PROBE:
            return
        self._probed += out.n_in
        if self._probed >= FILTER_FIELD_PROBE:
            log.warning("A filter names a field that none of the first records has; "
                        "the filter drops every record that lacks it.", sink=self.sink,
                        fields=",".join(sorted(self._unseen)), records=self._probed)


def _plain_records(entry: Entry) -> list[Record] | None:
    """No steps configured: one comprehension per entry; None if a record needs care."""
    try:
        datas = list(map(unpack_record, entry.records))
    except UndecodableRecord:
        return None
    if not all(type(d) is dict for d in datas):
        return None
    return list(map(Record, entry.ids(), datas, entry.records))
