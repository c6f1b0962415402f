"""What a sink's ``write`` gets: a :class:`Batch` of records.

A batch keeps its records as columns, one :class:`Records` per stream entry:
the record ids (made from the entry's ring and sequence numbers the first
time they are asked for), the decoded fields and the msgpack bytes. A sink
takes the columns it needs and no per-record object is made:

- ``batch.ids()``, ``batch.datas()``, ``batch.raws()``: one list each, in order;
- ``batch.records``: a list of :class:`Record` (id, data, raw), built the
  first time it is read (what a sink written before the columns uses; it
  works unchanged, at the cost of one object per record);
- ``batch.entries()``: ``(entry id, its records)`` per entry;
- ``batch.encoded()``: what the sink's own ``Sink.encode`` made of each entry's
  records right after the worker decoded them (``pump/sinks/_base.py``).

A batch made from a list of records (``Batch(records)``, as tests and plugins
do) answers the same calls from that list.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload


@dataclass(slots=True)
class Record:
    """One decoded analytics record as sinks see it.

    ``id`` is stable across redeliveries (``"<ring>:<seq>"``); ``data`` is
    the record's own fields after the pump's filters and omissions.
    """

    id: str
    data: dict[str, Any]
    #: The msgpack of ``data``: the bytes the app wrote when the pump left the fields
    #: alone; packed from ``data`` when first read if the pump changed them
    #: (:class:`ChangedRecord`); ``b""`` for a record made without it.
    raw: bytes = b""


_DATA = Record.__dict__["data"]  # the slots under the properties below
_RAW = Record.__dict__["raw"]


class ChangedRecord(Record):
    """A record whose fields the pump changed (iam conversion, omit-detail): ``raw``
    is packed from ``data`` the first time it is read, so a sink that never reads
    it never pays for it."""

    __slots__ = ()

    @property  # type: ignore[override]
    def raw(self) -> bytes:
        value = _RAW.__get__(self)
        if not value:
            from ._values import pack_record

            value = pack_record(self.data)
            _RAW.__set__(self, value)
        return value  # type: ignore[no-any-return]

    @raw.setter
    def raw(self, value: bytes) -> None:
        _RAW.__set__(self, value)


class RawRecord(Record):
    """A record handed on undecoded (a sink that ``forwards_bytes``, nothing to
    filter or omit): ``data`` is decoded from ``raw`` the first time it is read
    (``UndecodableRecord`` if it does not decode)."""

    __slots__ = ()

    @property  # type: ignore[override]
    def data(self) -> dict[str, Any]:
        value = _DATA.__get__(self)
        if value is None:
            from ._values import unpack_record

            value = unpack_record(self.raw)
            _DATA.__set__(self, value)
        return value  # type: ignore[no-any-return]

    @data.setter
    def data(self, value: dict[str, Any] | None) -> None:
        _DATA.__set__(self, value)


class Records(Sequence[Record]):
    """Records of one ring as columns (module docstring): a :class:`Record` is made only
    for whoever indexes or iterates.

    ``prefix`` is ``"<ring>:"`` and ``seqs`` the records' sequence numbers (ids are
    ``prefix + str(seq)``); ``datas`` the decoded fields, or None when the records are
    not decoded (they decode when read, as :class:`RawRecord`); ``raws`` the msgpack
    bytes, ``b""`` for a record whose fields the pump changed (packed when read, as
    :class:`ChangedRecord`). The pipeline may replace an element of ``datas`` or
    ``raws`` (trimming) before the batch reaches a sink; sinks only read.
    """

    __slots__ = ("_ids", "datas", "encoded", "prefix", "raws", "seqs")

    def __init__(self, prefix: str, seqs: Sequence[int], datas: list[Any] | None,
                 raws: list[bytes]) -> None:
        self.prefix = prefix
        self.seqs = seqs
        self.datas = datas
        self.raws = raws
        #: What the sink's ``encode`` made of these records, one item each (None: nothing).
        self.encoded: list[Any] | None = None
        self._ids: list[str] | None = None

    def ids(self) -> list[str]:
        """The record ids, in order (made in one step the first time)."""
        ids = self._ids
        if ids is None:
            prefix = self.prefix  # an f-string per id: 1,352 instructions, str + concat 1,621
            ids = self._ids = [f"{prefix}{seq}" for seq in self.seqs]
        return ids

    def data_list(self) -> list[Any]:
        """The decoded fields, in order (records not decoded yet are decoded now)."""
        datas = self.datas
        if datas is None:
            from ._values import unpack_record

            datas = self.datas = list(map(unpack_record, self.raws))
        return datas

    def raw_list(self) -> list[bytes]:
        """The msgpack bytes, in order (a changed record's packed now)."""
        raws = self.raws
        if not all(raws):
            from ._values import pack_record

            datas = self.data_list()
            for i, raw in enumerate(raws):
                if not raw:
                    raws[i] = pack_record(datas[i])
        return raws

    def __len__(self) -> int:
        return len(self.raws)

    def _record(self, i: int) -> Record:
        raw = self.raws[i]
        rid = self.ids()[i]
        if self.datas is None:
            return RawRecord(rid, None, raw)  # type: ignore[arg-type]
        if not raw:
            return ChangedRecord(rid, self.datas[i], b"")
        return Record(rid, self.datas[i], raw)

    @overload
    def __getitem__(self, i: int) -> Record: ...
    @overload
    def __getitem__(self, i: slice) -> Records: ...
    def __getitem__(self, i: int | slice) -> Record | Records:
        if isinstance(i, slice):
            part = Records(self.prefix, self.seqs[i],
                           None if self.datas is None else self.datas[i], self.raws[i])
            if self._ids is not None:
                part._ids = self._ids[i]
            if self.encoded is not None:
                part.encoded = self.encoded[i]
            return part
        n = len(self.raws)
        if not -n <= i < n:
            raise IndexError("record index out of range")
        return self._record(i % n)

    def __iter__(self) -> Iterator[Record]:
        return map(self._record, range(len(self.raws)))

    def __repr__(self) -> str:
        return f"Records({self.prefix!r}, {len(self)} records)"


class Batch:
    """The records of one or more stream entries of one shard (module docstring).

    ``entry_ids`` are the stream entries the records came from, in order;
    ``entry_sizes`` how many records each contributed (records of entry ``i``
    follow those of entry ``i - 1``). Sinks that must know which entries they
    already applied (``aggregate``) use :meth:`entries`.
    """

    __slots__ = ("_chunks", "_records", "entry_ids", "entry_sizes", "stream")

    def __init__(self, records: Sequence[Record] | None = None, stream: str = "",
                 entry_ids: list[str] | None = None, entry_sizes: list[int] | None = None,
                 *, chunks: Sequence[Records] | None = None) -> None:
        """A batch of ``records``, or of ``chunks`` (columns, one per entry, as the
        worker makes them); not both."""
        if records is not None and chunks is not None:
            raise TypeError("a batch takes records or chunks, not both")
        if records is None:
            self._records: list[Record] | None = None if chunks is not None else []
        else:
            self._records = records if isinstance(records, list) else list(records)
        self._chunks: list[Records] | None = None if chunks is None else list(chunks)
        self.stream = stream
        self.entry_ids: list[str] = entry_ids if entry_ids is not None else []
        self.entry_sizes: list[int] = entry_sizes if entry_sizes is not None else []

    @property
    def records(self) -> list[Record]:
        """Every record as a :class:`Record` (made the first time from the columns)."""
        recs = self._records
        if recs is None:
            recs = self._records = [r for chunk in self._chunks or () for r in chunk]
        return recs

    @records.setter
    def records(self, value: Sequence[Record]) -> None:
        self._records, self._chunks = list(value), None

    def ids(self) -> list[str]:
        """Every record's id, in order."""
        if self._records is not None:
            return [r.id for r in self._records]
        chunks = self._chunks or ()
        if len(chunks) == 1:
            return chunks[0].ids()
        return [i for c in chunks for i in c.ids()]

    def datas(self) -> list[Any]:
        """Every record's fields (the decoded dicts, not copies: read, do not change)."""
        if self._records is not None:
            return [r.data for r in self._records]
        chunks = self._chunks or ()
        if len(chunks) == 1:
            return chunks[0].data_list()
        return [d for c in chunks for d in c.data_list()]

    def raws(self) -> list[bytes]:
        """Every record's msgpack bytes (packed from the fields for a record without)."""
        if self._records is not None:
            from ._values import pack_record

            return [r.raw or pack_record(r.data) for r in self._records]
        return [b for c in self._chunks or () for b in c.raw_list()]

    def encoded(self) -> list[Any] | None:
        """What the sink's ``Sink.encode`` made of every record, in order; None when
        some records have nothing (a batch made from a list of records, or an entry
        the encoder gave up on)."""
        if self._records is not None:
            return None
        chunks = self._chunks or ()
        if any(c.encoded is None for c in chunks):
            return None
        if len(chunks) == 1:
            return chunks[0].encoded
        return [x for c in chunks for x in c.encoded or ()]

    def __len__(self) -> int:
        if self._records is not None:
            return len(self._records)
        return sum(map(len, self._chunks or ()))

    def __bool__(self) -> bool:
        return len(self) > 0

    def entries(self) -> list[tuple[str, Sequence[Record]]]:
        """``(entry id, its records)`` per entry; ``[]`` for a batch without entry ids.

        A batch of one entry needs no ``entry_sizes``; one of several entries
        without matching sizes raises ``ValueError``.
        """
        ids = self.entry_ids
        if not ids:
            return []
        chunks = self._chunks
        if chunks is not None and self._records is None and len(chunks) == len(ids) and (
                not self.entry_sizes or self.entry_sizes == [len(c) for c in chunks]):
            return list(zip(ids, chunks, strict=True))
        records = self.records
        if len(ids) == 1 and not self.entry_sizes:
            return [(ids[0], records)]
        sizes = self.entry_sizes
        if len(sizes) != len(ids) or sum(sizes) != len(records):
            raise ValueError(f"batch of {len(ids)} entries and {len(records)} records has "
                             f"entry_sizes {sizes[:5]}... that do not add up")
        out: list[tuple[str, Sequence[Record]]] = []
        start = 0
        for eid, n in zip(ids, sizes, strict=True):
            out.append((eid, records[start:start + n]))
            start += n
        return out

    def __repr__(self) -> str:
        return f"Batch({len(self)} records, stream={self.stream!r}, entries={len(self.entry_ids)})"


__all__ = ["Batch", "ChangedRecord", "RawRecord", "Record", "Records"]
