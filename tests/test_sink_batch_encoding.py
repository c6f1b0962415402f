"""The batch encoders of the file and postgres sinks (issue 18) give exactly what
the per-record encoders give: JSON Lines byte for byte, binary COPY fields and times as
``datetime.fromtimestamp(...)`` gives them. Pure functions: no
server needed (the sinks' own tests write through real files and PostgreSQL)."""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime, timedelta, timezone

import orjson

from pump.sinks import Record
from pump.sinks._encode import encode_each, json_line, json_lines
from pump.sinks._pgcopy import (
    NULL,
    SIGNATURE,
    TRAILER,
    binary_rows,
    cell,
    copy_stream,
    ts_micros,
)
from pump.sinks._values import Timestamp

RECORDS = [
    Record("r:1", {"seq": 1, "user": "a", "when": Timestamp.from_unix(1_700_000_000, 5)}),
    Record("r:2", {}),
    Record("r:3", {"_id": "theirs", "seq": 3}),  # the id key is replaced in place
    Record("r:4", {"seq": 4, "nested": [{"a": 1}, {"b": "x"}], "bytes": b"\xff"}),
    Record("r:5", {"seq": 5, 7: "a non-string key"}),
    Record("r:6", {"seq": 6, "deep": [[[[]]]]}),
]


def test_json_lines_are_json_line_byte_for_byte() -> None:
    lines, rejected = json_lines(RECORDS, "_id")
    assert (lines, rejected) == encode_each(RECORDS, lambda r: json_line(r, "_id"))
    assert lines[2] == b'{"_id":"r:3","seq":3}\n'
    too_deep: list = []
    for _ in range(300):
        too_deep = [too_deep]
    bad = [*RECORDS, Record("r:9", {"deep": too_deep})]
    lines, rejected = json_lines(bad, "_id")
    assert len(lines) == len(RECORDS) and list(rejected) == ["r:9"]


def test_copy_times_are_the_instants_datetime_gives() -> None:
    rnd = random.Random(18)
    values = [1_764_190_000 + rnd.random() * 1000 for _ in range(3000)]
    values += [-1.5, -0.0000005, 0.0000005, 1.9999995, 1_700_000_000.0000005, 1e10 + 0.25]
    for v in values:
        assert ts_micros(v) == _micros(datetime.fromtimestamp(v, UTC)), v
    assert ts_micros(1_700_000_000) == _micros(datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC))
    ms = datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert ts_micros(1_700_000_000_123) == _micros(ms)
    assert ts_micros("2026-12-01T10:00:00+02:00") == _micros(
        datetime(2026, 12, 1, 8, tzinfo=UTC))
    local = datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=timezone(timedelta(hours=-5)))
    assert ts_micros(local) == _micros(local)
    assert ts_micros("not a time") is ts_micros(True) is ts_micros(None) is None


def test_copy_cells_and_rows_line_up() -> None:
    assert cell(None) == NULL
    assert [_fields(cell(v))[0] for v in (True, 1, ["x"], "a\x00b")] == [
        b"True", b"1", b"['x']", "a\ufffdb".encode()]
    recs = [Record("ring:1", {"timestamp": 1_700_000_000, "username": "u\tv",
                              "effect": "allow", "s": 'q"\\\x00', "t": "\\u0000"}),
            Record("ring\x002", {"username": None}),
            Record("ring:3", {"deep": _too_deep()})]
    ids, datas = [r.id for r in recs], [r.data for r in recs]
    data, rejected = binary_rows(ids, datas, "timestamp", "username", "effect")
    assert list(rejected) == ["ring:3"]
    stream, _ = copy_stream(ids, datas, "timestamp", "username", "effect")
    assert stream == SIGNATURE + data + TRAILER
    rows = _rows(data)
    assert len(rows) == 2
    ident, ts, user, effect, record = rows[0]
    assert (ident, user, effect) == (b"ring:1", b"u\tv", b"allow")
    assert struct.unpack("!q", ts) == (ts_micros(1_700_000_000),)
    assert record[:1] == b"\x01"  # jsonb's version byte, then the JSON text
    assert orjson.loads(record[1:]) == {**recs[0].data, "s": 'q"\\\ufffd'}
    assert rows[1][0] == "ring\ufffd2".encode() and rows[1][1:4] == [None, None, None]


def _micros(when: datetime) -> int:
    return (when - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _fields(data: bytes) -> list[bytes | None]:
    """The fields of binary COPY data that holds only length-prefixed fields."""
    out: list[bytes | None] = []
    while data:
        (n,) = struct.unpack("!i", data[:4])
        out.append(None if n < 0 else data[4:4 + n])
        data = data[4 + max(n, 0):]
    return out


def _rows(data: bytes) -> list[list[bytes | None]]:
    """Binary COPY rows (each a field count, then the fields) as lists of fields."""
    rows = []
    while data:
        (count,) = struct.unpack("!h", data[:2])
        data, row = data[2:], []
        for _ in range(count):
            (n,) = struct.unpack("!i", data[:4])
            row.append(None if n < 0 else data[4:4 + n])
            data = data[4 + max(n, 0):]
        rows.append(row)
    return rows


def _too_deep() -> list:
    value: list = []
    for _ in range(300):
        value = [value]
    return value
