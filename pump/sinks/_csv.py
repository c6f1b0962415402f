"""CSV rows for the file sink, in its own style and in iam-pump's.

``csv_style: collector`` (default): the columns of ``csv_columns`` with the
record id in ``id_key``, Python's ``csv`` quoting; a missing field is an
empty cell, lists and maps are JSON, booleans ``true``/``false``, times ISO
8601 in UTC with ``Z``.

``csv_style: iam``: what iam-pump's csv pump writes, reproduced:

- one file per hour in the directory (``csv_dir``), named
  ``<year>-<Month>-<day>-<hour>.csv`` (``2026-December-1-21.csv``: Go's
  month name, no zero padding), from the clock when the batch is written; the
  header row when the file is created;
- the header is the Go field names of ``AnalyticsRecord`` (``TimeStamp`` ...
  ``ExpireAt``), no id column;
- cells as Go prints the struct's fields: the integer in decimal, strings
  as they are, ``ExpireAt`` as Go's ``time.Time.String()``; a field the
  record lacks as Go's zero value (``0``, empty, ``0001-01-01 00:00:00
  +0000 UTC``);
- rows quoted by Go's ``encoding/csv`` rules: a cell is quoted when it
  holds a comma, a double quote, CR or LF, is exactly ``\\.``, or begins with
  white space (Unicode White_Space); quotes inside are doubled; rows end
  with LF.

Times are printed in UTC: iam-pump prints its own local zone, which is UTC
in its container image. Records are matched by iam-pump's stored names
(``timestamp`` ... ``expireAt``, ``pump/iam/record.py``).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ._base import PermanentError, Record
from ._encode import dumps
from ._values import Timestamp, time_text

__all__ = ["IAM_HEADER", "collector_header", "collector_lines", "iam_file_name",
           "iam_header", "iam_lines"]


def collector_header(columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(columns)
    return buf.getvalue().encode()


def collector_lines(records: Sequence[Record], columns: Sequence[str],
                    id_key: str) -> list[bytes]:
    """One line per record, in ``csv_style: collector``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    ends = []
    id_at = columns.index(id_key) if id_key in columns else None
    for r in records:
        get = r.data.get
        row = [get(col) for col in columns]
        if id_at is not None:
            row[id_at] = r.id
        writer.writerow([v if type(v) is str else _collector_cell(v) for v in row])
        ends.append(buf.tell())
    text = buf.getvalue()
    starts = [0, *ends[:-1]]
    return [text[a:b].encode("utf-8", "backslashreplace")
            for a, b in zip(starts, ends, strict=True)]


def _collector_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if type(value) is float:
        return repr(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, datetime):
        return time_text(value)
    try:
        return dumps(value).decode()
    except PermanentError:
        return str(value)

# (header, stored field name, zero value); the order is the Go struct's
_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("TimeStamp", "timestamp", "0"),
    ("Username", "username", ""),
    ("Effect", "effect", ""),
    ("Conclusion", "conclusion", ""),
    ("Request", "request", ""),
    ("Policies", "policies", ""),
    ("Deciders", "deciders", ""),
    ("ExpireAt", "expireAt", Timestamp.from_unix(-62135596800).go_string()),
)
IAM_HEADER = tuple(go for go, _, _ in _COLUMNS)
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
# Unicode White_Space, which Go's unicode.IsSpace tests
_WHITE_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                         + "".join(chr(c) for c in range(0x2000, 0x200B)))


def iam_file_name(now: float | None = None) -> str:
    """The name of the hour's file (UTC)."""
    t = time.gmtime(time.time() if now is None else now)
    return f"{t.tm_year}-{_MONTHS[t.tm_mon - 1]}-{t.tm_mday}-{t.tm_hour}.csv"


def _cell(value: Any, zero: str) -> str:
    if value is None:
        return zero
    if type(value) is str:
        return value
    if isinstance(value, datetime):
        return Timestamp.from_datetime(value).go_string()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _quoted(cell: str) -> str:
    if cell == "":
        return cell
    if (cell == "\\." or cell[0] in _WHITE_SPACE
            or any(c in cell for c in ',"\r\n')):
        return '"' + cell.replace('"', '""') + '"'
    return cell


def iam_header() -> bytes:
    return (",".join(IAM_HEADER) + "\n").encode()


def iam_lines(records: Sequence[Record]) -> list[bytes]:
    """One line per record, in ``csv_style: iam``."""
    return [(",".join(_quoted(_cell(r.data.get(name), zero)) for _, name, zero in _COLUMNS)
             + "\n").encode("utf-8", "backslashreplace") for r in records]
