"""Encoding helpers shared by the sinks that write JSON (file, stdout, http, syslog).

Times (the msgpack timestamp, ``pump/sinks/_values.py``) are ISO 8601 in UTC
with ``Z``; bytes UTF-8 text; sets and tuples lists; Decimal text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson

from ._base import PermanentError, Record
from ._values import json_default as _default
from ._values import pack_record

T = TypeVar("T")
_BASE = orjson.OPT_PASSTHROUGH_DATETIME  # every datetime through _default: one format


def dumps(value: Any, *, indent: bool = False) -> bytes:
    """``orjson.dumps`` with the fallbacks above; PermanentError if it still fails.

    Maps with non-string keys (msgpack allows them) are retried with
    ``OPT_NON_STR_KEYS``, which costs more than the plain call.
    """
    option = _BASE | orjson.OPT_INDENT_2 if indent else _BASE
    try:
        return orjson.dumps(value, default=_default, option=option)
    except orjson.JSONEncodeError:
        pass
    try:
        return orjson.dumps(value, default=_default, option=option | orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise PermanentError(f"a record cannot be encoded as JSON: {exc}") from exc


def packb(data: dict[str, Any]) -> bytes:
    """A record's fields as msgpack: ormsgpack, or msgpack for what it cannot write
    (times become the msgpack timestamp extension, like the producer wrote them)."""
    import ormsgpack

    try:
        return ormsgpack.packb(data, option=ormsgpack.OPT_NON_STR_KEYS
                               | ormsgpack.OPT_PASSTHROUGH_DATETIME)
    except (TypeError, ormsgpack.MsgpackEncodeError):
        return pack_record(data)


def encode_each(records: Sequence[Record], encode: Callable[[Record], T]
                ) -> tuple[list[T], dict[str, str]]:
    """``encode`` applied to each record: what it gave, and the ids of the records it
    refused (a ``PermanentError``) with the reason, for ``PermanentError.rejected``."""
    try:
        return [encode(r) for r in records], {}
    except PermanentError:
        pass
    out: list[T] = []
    rejected: dict[str, str] = {}
    for r in records:
        try:
            out.append(encode(r))
        except PermanentError as exc:
            rejected[r.id] = str(exc)
    return out, rejected


def record_object(record: Record, id_key: str) -> dict[str, Any]:
    """The record's own fields plus its id under ``id_key``."""
    obj = dict(record.data)
    obj[id_key] = record.id
    return obj


def json_line(record: Record, id_key: str) -> bytes:
    """One JSON Lines line (with the trailing newline): the record's fields plus its id."""
    data = record.data
    if id_key in data or not data:
        return dumps(record_object(record, id_key)) + b"\n"
    # Splice the id into the encoded object instead of copying the dict:
    # b'{...}' -> b'{...,"_id":"..."}'
    return b"".join((dumps(data)[:-1], b",", orjson.dumps(id_key), b":",
                     orjson.dumps(record.id), b"}\n"))


_LINE = _BASE | orjson.OPT_APPEND_NEWLINE


def json_lines(records: Sequence[Record], id_key: str) -> tuple[list[bytes], dict[str, str]]:
    """:func:`json_line` of every record (and the records refused, as :func:`encode_each`)."""
    return json_lines_of([r.id for r in records], [r.data for r in records], id_key)


def json_lines_of(ids: Sequence[str], datas: Sequence[dict[str, Any]], id_key: str
                  ) -> tuple[list[bytes], dict[str, str]]:
    """:func:`json_lines` of a batch's columns (``Batch.ids()``, ``Batch.datas()``).

    One ``orjson.dumps`` call per record with the newline appended by orjson.
    The id goes into the record's own dict for the call and is taken out
    again (a record with a field named ``id_key`` of its own is copied
    instead, the id replacing that field in its place): a copy of every
    record's fields cost more than the dumps (callgrind: 8,400 against 7,600
    instructions a record with the id, 6,600 without; ``bench/_pump_cost.py``).
    Only a batch with a record that needs :func:`dumps`' fallbacks goes record
    by record. (One ``dumps`` of the whole batch as a list costs more:
    splitting it into lines scans the buffer twice.)
    """
    dump = orjson.dumps
    out: list[bytes] = []
    append = out.append
    try:
        for data, rid in zip(datas, ids, strict=True):
            if id_key in data:
                append(dump({**data, id_key: rid}, default=_default, option=_LINE))
                continue
            data[id_key] = rid
            try:
                append(dump(data, default=_default, option=_LINE))
            finally:
                del data[id_key]
        return out, {}
    except (TypeError, orjson.JSONEncodeError):
        records = [Record(rid, data) for rid, data in zip(ids, datas, strict=True)]
        return encode_each(records, lambda r: json_line(r, id_key))
