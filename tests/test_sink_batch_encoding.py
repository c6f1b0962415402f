"""The batch encoders of the file and postgres sinks (issue 18) give exactly what
the per-record encoders give: JSON Lines byte for byte, COPY cells and times as
``datetime.fromtimestamp(...).isoformat()`` writes them. Pure functions: no
server needed (the sinks' own tests write through real files and PostgreSQL)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from pump.sinks import Record
from pump.sinks._encode import encode_each, json_line, json_lines
from pump.sinks._pgcopy import NULL, cell, copy_rows, text_cell, ts_cell
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


def test_copy_time_cells_are_what_datetime_writes() -> None:
    rnd = random.Random(18)
    values = [1_764_190_000 + rnd.random() * 1000 for _ in range(3000)]
    values += [-1.5, -0.0000005, 0.0000005, 1.9999995, 1_700_000_000.0000005, 1e10 + 0.25]
    for v in values:
        assert ts_cell(v) == datetime.fromtimestamp(v, UTC).isoformat().encode(), v
    assert ts_cell(1_700_000_000) == b"2023-11-14T22:13:20+00:00"
    assert ts_cell(1_700_000_000_123) == b"2023-11-14T22:13:20.123000+00:00"  # ms
    assert ts_cell("2026-12-01T10:00:00+02:00") == b"2026-12-01T08:00:00+00:00"
    local = datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=timezone(timedelta(hours=-5)))
    assert ts_cell(local) == b"2026-01-02T08:04:05.000600+00:00"
    assert ts_cell("not a time") == ts_cell(True) == ts_cell(None) == NULL


def test_copy_cells_escape_and_rows_line_up() -> None:
    assert text_cell("a\\b\tc\nd\re\x00") == "a\\\\b\\tc\\nd\\re\ufffd".encode()
    assert cell(None) == NULL and cell(True) == b"True" and cell(1) == b"1"
    assert cell(["x"]) == b"['x']"
    recs = [Record("ring:1", {"timestamp": 1_700_000_000, "username": "u\tv",
                              "effect": "allow", "s": 'q"\\\x00'}),
            Record("ring\t2", {"username": None}),
            Record("ring:3", {"deep": _too_deep()})]
    data, rejected = copy_rows(recs, "timestamp", "username", "effect")
    assert list(rejected) == ["ring:3"]
    rows = [line.split(b"\t") for line in data.splitlines()]
    assert rows[0][:4] == [b"ring:1", b"2023-11-14T22:13:20+00:00", b"u\\tv", b"allow"]
    assert b"\\\\ufffd" in rows[0][4] and b'\\\\"' in rows[0][4]  # JSON escapes, doubled
    assert rows[1][:4] == [b"ring\\t2", NULL, NULL, NULL]


def _too_deep() -> list:
    value: list = []
    for _ in range(300):
        value = [value]
    return value
