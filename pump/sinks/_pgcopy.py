"""The ``postgres`` sink's rows in ``COPY`` text format, a batch at a time.

One row per record: ``id``, ``ts``, ``username``, ``effect``, ``record``
(``pump/sinks/postgres.py``), tab-separated, ``\\N`` for NULL, backslash
escapes. Per record that is one ``orjson.dumps`` and a few byte operations:
JSON text has no raw tab, newline or carriage return, so only its
backslashes are doubled (and a ``\\u0000`` escape, which jsonb refuses,
becomes U+FFFD); the ids of a batch are checked for characters to escape in
one pass; user and effect cells repeat, so each distinct value is escaped
once (cached); a time is formatted from its cached whole second plus the
microseconds, rounded as ``datetime.fromtimestamp`` rounds them. NUL
characters, which PostgreSQL text cannot hold, are stored as U+FFFD.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from ._base import PermanentError, Record
from ._encode import dumps
from ._time import epoch_seconds
from ._values import json_default

NULL = b"\\N"
_OPTION = orjson.OPT_PASSTHROUGH_DATETIME  # as _encode.dumps: every time through json_default
# A JSON \u0000 escape not itself escaped: jsonb and text cannot hold NUL.
_JSON_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")
_SPECIAL = re.compile("[\\\\\t\n\r\x00]")


def copy_rows(records: Sequence[Record], ts_field: str, user_field: str, effect_field: str
              ) -> tuple[bytes, dict[str, str]]:
    """The COPY text of ``records``, and the ids of those JSON cannot encode (with why)."""
    ids = [r.id for r in records]
    if _SPECIAL.search("".join(ids)):
        id_cells = [text_cell(i) for i in ids]
    else:
        id_cells = "\t".join(ids).encode().split(b"\t")
    dump = orjson.dumps
    out: list[bytes] = []
    add = out.extend
    rejected: dict[str, str] = {}
    for rec, id_cell in zip(records, id_cells, strict=True):
        data = rec.data
        try:
            js = dump(data, default=json_default, option=_OPTION)
        except (TypeError, orjson.JSONEncodeError):
            try:
                js = dumps(data)  # its fallbacks (non-string keys), or PermanentError
            except PermanentError as exc:
                rejected[rec.id] = str(exc)
                continue
        if b"\\" in js:
            if b"\\u0000" in js:
                js = _JSON_NUL.sub(rb"\1\\ufffd", js)
            js = js.replace(b"\\", b"\\\\")
        add((id_cell, b"\t", ts_cell(data.get(ts_field)), b"\t", cell(data.get(user_field)),
             b"\t", cell(data.get(effect_field)), b"\t", js, b"\n"))
    return b"".join(out), rejected


def text_cell(value: str) -> bytes:
    """A text value in COPY text format (NUL becomes U+FFFD)."""
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r").replace("\x00", "\ufffd")).encode()


def cell(value: Any) -> bytes:
    """A text column from any field value (its ``str``), or NULL for None."""
    if value is None:
        return NULL
    try:
        return _cached_cell(value)
    except TypeError:  # unhashable (a list, a map)
        return text_cell(str(value))


@functools.lru_cache(maxsize=4096, typed=True)
def _cached_cell(value: Any) -> bytes:
    return text_cell(str(value))


def ts_cell(value: Any) -> bytes:
    """The ``ts`` column from a record's time field (``pump/sinks/_time.py``), or NULL.

    The same text as ``datetime.fromtimestamp(seconds, UTC).isoformat()``.
    """
    seconds = epoch_seconds(value)
    if seconds is None:
        return NULL
    if type(seconds) is int:
        return _second(seconds) + b"+00:00"
    # datetime.fromtimestamp's rounding: the fraction's microseconds half to even
    frac, whole = math.modf(seconds)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        us -= 1_000_000
        whole += 1.0
    elif us < 0:
        us += 1_000_000
        whole -= 1.0
    if us == 0:
        return _second(int(whole)) + b"+00:00"
    return b"%s.%06d+00:00" % (_second(int(whole)), us)


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> bytes:
    """Records of a batch mostly share a few seconds: format each once."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().removesuffix("+00:00").encode()
