"""Stream entries -> sink records: decode, convert iam's records, filter, omit
detail, trim.

This is the per-record hot path of a worker. Per entry: one comprehension
of ``ormsgpack.unpackb`` calls (Rust) over its records with one extension
hook, the record ids in one step, then the configured steps as one function
compiled per sink and record format (:func:`compile_steps`: iam conversion,
filters, omit-detail), so a record costs little more than its decode. Only
when a record of the entry does not decode that way (a map with non-string
keys, which ``msgpack.unpackb`` takes; a bad extension; not msgpack at all)
is the entry taken record by record (``pump/sinks/_values.py``); a record
that cannot be decoded or converted becomes a dead letter of its own
(``pump/_deadletter.py``), its neighbours go on.

An entry's records come out as columns (:class:`~pump.sinks.Records`: the
ids' ring and sequence numbers, the decoded fields, the bytes), not one
object per record: a sink reads the columns it needs, and a
:class:`~pump.sinks.Record` is made only for a sink that asks for
``batch.records``. The bytes are the record's msgpack as the app wrote it
when the steps left its fields alone; a record they changed has ``b""``
there, packed again only if something reads it (``max_record_bytes``, a
sink that forwards bytes; :class:`~pump.sinks.ChangedRecord`). A sink that
says ``forwards_bytes`` and has no steps to run gets its records undecoded
(no fields column; decoded only if read, :class:`~pump.sinks.RawRecord`).
A sink with its own ``encode`` (the file sink's JSON Lines) encodes each
entry's records as soon as they are decoded, while their fields are in the
CPU's caches (``Sink.encode``); a batch decoded whole and encoded after costs
about a quarter more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from collector.common.log import get_logger
from collector.common.stream import (
    REPLAY_FOR,
    BadEntry,
    Entry,
    decode_entry,
    encode_entry,
    record_id,
)

from ._deadletter import DeadItem, DeadReason
from .config import Filters
from .iam.record import NotAnIamRecord, is_iam, to_iam
from .sinks._base import Record, Records
from .sinks._values import UndecodableRecord, pack_record, unpack_record, unpack_records

log = get_logger(__name__)

#: Records a filter field may be missing from before the pipeline warns about it.
FILTER_FIELD_PROBE = 100

Fields = dict[Any, Any]
_REPLAY_FOR_B = REPLAY_FOR.encode()


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class EntryRecords(NamedTuple):
    """One stream entry with records for the sink."""

    entry_id: str
    records: Records  # what is left after filters, in the entry's order
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
        """Every record to write, in order (as objects: tests and tools)."""
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


#: ``run(datas, raws, seen) -> (kept, datas, raws, n_filtered, [(index, why not
#: convertible)])``: ``kept`` the indices of the records that go on, ``raws`` ``b""``
#: for a record the steps changed.
Steps = Callable[[list[Any], list[bytes], "Callable[[Any], None] | None"],
                 tuple[list[int], list[Any], list[bytes], int, list[tuple[int, str]]]]


def compile_steps(filters: Filters, omit_fields: Sequence[str], fmt: str) -> Steps | None:
    """The steps a sink's records go through, as one function over an entry's records.

    ``fmt`` is the entry's record format: ``"iam"`` converts every record
    (:func:`~pump.iam.record.to_iam`), ``"auto"`` those with iam's field
    names, ``""`` none. Then the filters (the semantics of
    :func:`compile_filter`, inlined), then omit-detail (a listed field that is
    set becomes ``""``). None when there is nothing to do.
    """
    include, exclude = filters.effective() if filters.active else ({}, {})
    inc = tuple(include.items())
    exc = tuple(exclude.items())
    omit = tuple(omit_fields)
    if not (inc or exc or omit or fmt):
        return None
    convert_all = fmt == "iam"
    convert_some = fmt == "auto"
    filtering = bool(inc or exc)

    def run(datas: list[Any], raws: list[bytes], seen: Callable[[Any], None] | None
            ) -> tuple[list[int], list[Any], list[bytes], int, list[tuple[int, str]]]:
        kept: list[int] = []
        out_datas: list[Any] = []
        out_raws: list[bytes] = []
        bad: list[tuple[int, str]] = []
        filtered = 0
        for i, data in enumerate(datas):
            changed = False
            if convert_all or (convert_some and is_iam(data)):
                try:
                    data = to_iam(data)
                except NotAnIamRecord as err:
                    bad.append((i, str(err)))
                    continue
                changed = True
            if filtering:
                if seen is not None:
                    seen(data)
                get = data.get
                drop = False
                try:
                    for name, values in inc:
                        if get(name) not in values:
                            drop = True
                            break
                    else:
                        for name, values in exc:
                            if get(name) in values:
                                drop = True
                                break
                except TypeError:  # an unhashable value matches no listed value
                    drop = bool(inc)
                if drop:
                    filtered += 1
                    continue
            if omit:
                for name in omit:
                    if data.get(name):
                        data[name] = ""
                        changed = True
            kept.append(i)
            out_datas.append(data)
            out_raws.append(b"" if changed else raws[i])
        return kept, out_datas, out_raws, filtered, bad

    return run


class RecordPipeline:
    """Per-sink settings applied to every record, in the seed's order.

    ``decode=False`` (a sink that ``forwards_bytes``): with no steps to run,
    records are handed on undecoded (:class:`~pump.sinks.RawRecord`).
    """

    def __init__(self, filters: Filters, *, omit: bool, detail_fields: Sequence[str],
                 max_record_size: int | None, sink: str = "", decode: bool = True,
                 encode: Callable[[Records], list[Any] | None] | None = None) -> None:
        self.encode = encode  # the sink's own Sink.encode, if it has one
        self.keep = compile_filter(filters)
        self.omit_fields = tuple(detail_fields) if omit else ()
        self.max_record_size = max_record_size
        self.sink = sink
        self.decode = decode
        self._steps = {fmt: compile_steps(filters, self.omit_fields, fmt)
                       for fmt in ("", "iam", "auto")}
        include, exclude = filters.effective()
        # Filter fields not seen in any record yet (warned about after FILTER_FIELD_PROBE).
        self._unseen = set(include) | set(exclude)
        self._probed = 0

    def prepare(self, entries: Sequence[tuple[Any, Fields]]) -> Prepared:
        out = Prepared()
        for eid_raw, fields in entries:
            eid = eid_raw.decode() if isinstance(eid_raw, bytes) else eid_raw
            target = fields.get(_REPLAY_FOR_B, fields.get(REPLAY_FOR))
            if target is not None and _text(target) != self.sink:
                out.ack_only.append(eid)  # a dead letter replayed for another sink's group
                continue
            try:
                entry = decode_entry(fields)
            except BadEntry as exc:
                out.n_decode_errors += 1
                out.dead.append(DeadItem(dict(fields), DeadReason.UNDECODABLE_ENTRY, str(exc),
                                         eid))
                continue
            out.n_in += len(entry.records)
            recs = self._entry(entry, eid, out)
            if recs and self.encode is not None and recs.datas is not None:
                recs.encoded = self.encode(recs)
                if recs.encoded is not None and all(recs.raws):
                    recs.datas = None  # freed while in cache; decoded again if read
            if recs:
                out.entries.append(EntryRecords(eid, recs, fields))
            else:
                out.ack_only.append(eid)
        if self._unseen and self.keep is not None:
            self._probe_filter_fields(out)
        return out

    def _entry(self, entry: Entry, eid: str, out: Prepared) -> Records:
        """One entry's records: one decode pass, the compiled steps, then trimming."""
        steps = self._steps[entry.fmt]
        raws = entry.records
        first = entry.first_seq
        prefix = f"{entry.ring}:"
        seqs = range(first, first + len(raws))
        if steps is None and not self.decode and self.max_record_size is None:
            return Records(prefix, seqs, None, raws)
        datas = unpack_records(raws)
        if datas is None or {*map(type, datas)} != _DICT_ONLY:
            return self._careful(entry, eid, out)
        if steps is None:
            recs = Records(prefix, seqs, datas, raws)
        else:
            probing = self._unseen and self.keep is not None and self._probed < FILTER_FIELD_PROBE
            kept, datas, raws, filtered, bad = steps(
                datas, raws, self._unseen.difference_update if probing else None)
            out.n_filtered += filtered
            for i, why in bad:
                self._dead(out, entry, eid, i, DeadReason.UNCONVERTIBLE_RECORD, why)
            recs = Records(prefix, seqs if len(kept) == len(seqs) else [first + i for i in kept],
                           datas, raws)
        if self.max_record_size is not None:
            self._trim(recs, out)
        return recs

    def _careful(self, entry: Entry, eid: str, out: Prepared) -> Records:
        """The entry record by record: what decodes goes on, the rest is dead-lettered."""
        steps = self._steps[entry.fmt]
        raws = entry.records
        good: list[int] = []  # indices in the entry of the records that decode
        datas, good_raws = [], []
        for i, raw in enumerate(raws):
            try:
                data = unpack_record(raw)
                if type(data) is not dict:
                    raise UndecodableRecord(
                        f"record is a msgpack {type(data).__name__}, not a map")
            except UndecodableRecord as exc:
                self._dead(out, entry, eid, i, DeadReason.UNDECODABLE_RECORD, str(exc))
                continue
            good.append(i)
            datas.append(data)
            good_raws.append(raw)
        if steps is not None:
            probing = self._unseen and self.keep is not None
            kept, datas, good_raws, filtered, bad = steps(
                datas, good_raws, self._unseen.difference_update if probing else None)
            out.n_filtered += filtered
            for j, why in bad:
                self._dead(out, entry, eid, good[j], DeadReason.UNCONVERTIBLE_RECORD, why)
            good = [good[j] for j in kept]
        first = entry.first_seq
        recs = Records(f"{entry.ring}:", [first + i for i in good], datas, good_raws)
        if self.max_record_size is not None:
            self._trim(recs, out)
        return recs

    @staticmethod
    def _dead(out: Prepared, entry: Entry, eid: str, i: int, reason: DeadReason,
              why: str) -> None:
        out.n_decode_errors += 1
        out.dead.append(DeadItem(
            encode_entry(entry.ring, entry.first_seq + i, [entry.records[i]], entry.fmt),
            reason, why, eid, record_id(entry.ring, entry.first_seq + i)))

    def _trim(self, recs: Records, out: Prepared) -> None:
        limit = self.max_record_size
        assert limit is not None
        datas = recs.data_list()
        raws = recs.raws
        for i, raw in enumerate(raws):
            if not raw:  # changed by the steps: packed once, kept
                raw = raws[i] = pack_record(datas[i])
            if len(raw) > limit:
                datas[i], raws[i] = trim_record(datas[i], raw, limit)
                out.n_trimmed += 1

    def _probe_filter_fields(self, out: Prepared) -> None:
        if self._probed >= FILTER_FIELD_PROBE:
            return
        self._probed += out.n_in
        if self._probed >= FILTER_FIELD_PROBE:
            log.warning("A filter names a field that none of the first records has; "
                        "the filter drops every record that lacks it.", sink=self.sink,
                        fields=",".join(sorted(self._unseen)), records=self._probed)


_DICT_ONLY = {dict}
