"""The ``file`` and ``stdout`` sinks: JSON Lines and CSV on local disk, rotation, modes."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from pump.sinks import Batch, Record, RetryableError, Verdict, build_sink


def _batch(lo: int, hi: int) -> Batch:
    return Batch([Record(f"ring:{i}", {
        "timestamp": 1700000000 + i, "username": f"u{i % 3}", "effect": "allow",
        "conclusion": "ok, granted", "request": {"resource": "r", "action": "get"},
        "policies": ["p1"], "deciders": "", "seq": i, "flag": True}) for i in range(lo, hi)])


def _jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_jsonl_lines_are_the_record_plus_id(tmp_path: Path) -> None:
    path = tmp_path / "out" / "analytics.jsonl"
    sink = build_sink("file", {"path": str(path)})
    sink.open()
    try:
        assert sink.write(_batch(0, 100), deadline=time.monotonic() + 5) is Verdict.OK
        assert sink.write(_batch(100, 200), deadline=time.monotonic() + 5) is Verdict.OK
        sink.health_check(deadline=time.monotonic() + 5)
    finally:
        sink.close()
        sink.close()
    lines = _jsonl(path)
    seqs = [line["seq"] for line in lines]
    assert seqs == list(range(200)), "records lost, duplicated or out of order"
    assert lines[5] == {**_batch(5, 6).records[0].data, "_id": "ring:5"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_redelivery_is_appended_again(tmp_path: Path) -> None:
    """A file cannot deduplicate: the class says so and a redelivery shows up twice."""
    path = tmp_path / "a.jsonl"
    sink = build_sink("file", {"path": str(path), "fsync": "never"})
    assert sink.deduplicates is False
    sink.open()
    sink.write(_batch(0, 3), deadline=time.monotonic() + 5)
    sink.write(_batch(0, 3), deadline=time.monotonic() + 5)
    sink.close()
    assert [line["_id"] for line in _jsonl(path)] == ["ring:0", "ring:1", "ring:2"] * 2


def test_csv_has_the_seed_header_and_json_cells(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    for _ in range(2):  # reopening an existing file does not repeat the header
        sink = build_sink("file", {"path": str(path), "format": "csv", "fsync": "always"})
        sink.open()
        sink.write(_batch(0, 2), deadline=time.monotonic() + 5)
        sink.close()
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["timestamp", "username", "effect", "conclusion", "request", "policies",
                       "deciders", "_id"]
    assert len(rows) == 5
    assert rows[1] == ["1700000000", "u0", "allow", "ok, granted",
                       '{"resource":"r","action":"get"}', '["p1"]', "", "ring:0"]


def test_csv_custom_columns(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    sink = build_sink("file", {"path": str(path), "format": "csv",
                               "csv_columns": ["_id", "flag", "missing"]})
    sink.open()
    sink.write(_batch(0, 1), deadline=time.monotonic() + 5)
    sink.close()
    assert list(csv.reader(path.open())) == [["_id", "flag", "missing"],
                                             ["ring:0", "true", ""]]


def test_rotation_by_size_keeps_every_record_once(tmp_path: Path) -> None:
    out = tmp_path / "rot"
    sink = build_sink("file", {"path": str(out), "max_bytes": 4096})
    sink.open()
    for lo in range(0, 300, 50):
        sink.write(_batch(lo, lo + 50), deadline=time.monotonic() + 5)
    sink.close()
    files = sorted(out.iterdir())
    assert len(files) > 3
    for f in files:
        assert f.name.startswith("analytics-") and f.suffix == ".jsonl"
        assert f.stat().st_size <= 4096
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    seqs = sorted(line["seq"] for f in files for line in _jsonl(f))
    assert seqs == list(range(300))


def test_rotation_by_hour_starts_a_new_file(tmp_path: Path) -> None:
    out = tmp_path / "hourly"
    sink = build_sink("file", {"path": str(out), "rotate_hourly": True, "format": "csv"})
    sink.open()
    sink.write(_batch(0, 5), deadline=time.monotonic() + 5)
    sink._hour -= 1  # as if the file had been opened in the previous hour
    sink.write(_batch(5, 10), deadline=time.monotonic() + 5)
    sink.close()
    files = sorted(out.iterdir())
    assert len(files) == 2
    ids = [row[-1] for f in files for row in list(csv.reader(f.open()))[1:]]
    assert ids == [f"ring:{i}" for i in range(10)]


def test_file_moved_away_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    sink = build_sink("file", {"path": str(path)})
    sink.open()
    sink.write(_batch(0, 2), deadline=time.monotonic() + 5)
    path.rename(tmp_path / "a.jsonl.1")  # logrotate
    sink.write(_batch(2, 4), deadline=time.monotonic() + 5)
    sink.close()
    assert [line["seq"] for line in _jsonl(tmp_path / "a.jsonl.1")] == [0, 1]
    assert [line["seq"] for line in _jsonl(path)] == [2, 3]


def test_deadline_passed_and_unwritable_dir(tmp_path: Path) -> None:
    sink = build_sink("file", {"path": str(tmp_path / "a.jsonl")})
    sink.open()
    with pytest.raises(RetryableError):
        sink.write(_batch(0, 1), deadline=time.monotonic() - 1)
    sink.close()
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    bad = build_sink("file", {"path": str(blocked / "x.jsonl")})
    with pytest.raises(RetryableError, match="cannot open"):
        bad.open()
    bad.close()


def test_bad_meta_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="format"):
        build_sink("file", {"path": str(tmp_path), "format": "xml"})
    with pytest.raises(ValidationError, match="max_bytes"):
        build_sink("file", {"path": str(tmp_path), "max_bytes": "big"})
    with pytest.raises(ValidationError, match="path"):
        build_sink("file", {})
    with pytest.raises(ValidationError, match="rotate"):
        build_sink("file", {"path": str(tmp_path), "rotate": True})


def test_stdout_sink_prints_json_lines() -> None:
    code = (
        "import time\n"
        "from pump.sinks import Batch, Record, build_sink\n"
        "s = build_sink('stdout', {})\n"
        "s.open()\n"
        "s.write(Batch([Record('r:1', {'a': 1}), Record('r:2', {'b': b'x'})]),"
        " deadline=time.monotonic() + 5)\n"
        "s.health_check(deadline=time.monotonic() + 5)\n"
        "s.close(); s.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                         cwd=Path(__file__).parent.parent, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert [orjson.loads(line) for line in out.stdout.splitlines()] == [
        {"a": 1, "_id": "r:1"}, {"b": "x", "_id": "r:2"}]


def test_two_workers_rotating_into_one_directory_never_share_a_file(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    sinks = [build_sink("file", {"path": str(out), "max_bytes": 2048, "fsync": "never"})
             for _ in range(2)]
    for s in sinks:
        s.open()
    for lo in range(0, 200, 20):
        for k, s in enumerate(sinks):
            s.write(_batch(lo + k * 1000, lo + k * 1000 + 20), deadline=time.monotonic() + 5)
    paths = [s.current_path for s in sinks]
    assert paths[0] != paths[1]
    for s in sinks:
        s.close()
    seqs = sorted(line["seq"] for f in out.iterdir() for line in _jsonl(f))
    assert seqs == [*range(200), *range(1000, 1200)]


def _later() -> float:
    return time.monotonic() + 10


def test_a_torn_last_line_in_a_shared_file_is_cut_before_appending(tmp_path: Path) -> None:
    """A writer killed mid-write leaves half a line; the next writer removes it first."""
    path = tmp_path / "out.jsonl"
    sink = build_sink("file", {"path": str(path)})
    sink.open()
    sink.write(_batch(0, 5), deadline=_later())
    with open(path, "ab") as f:  # what a worker killed inside write() leaves behind
        f.write(b'{"seq": 5, "username": "tor')
    sink.write(_batch(5, 10), deadline=_later())
    sink.close()
    assert [r["seq"] for r in _jsonl(path)] == list(range(10))


def test_a_torn_csv_file_keeps_its_header(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_bytes(b"timestamp,usern")  # a header cut short: nothing complete survives
    sink = build_sink("file", {"path": str(path), "format": "csv"})
    sink.open()
    sink.write(_batch(0, 3), deadline=_later())
    sink.close()
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0][0] == "timestamp" and len(rows) == 4


def test_abandoned_rotated_files_are_repaired_at_open(tmp_path: Path) -> None:
    directory = tmp_path / "rot"
    directory.mkdir()
    abandoned = directory / "analytics-20260101T000000Z-0000.jsonl"
    abandoned.write_bytes(b'{"seq": 1}\n{"seq": 2}\n{"seq": 3, "user')
    sink = build_sink("file", {"path": str(directory), "max_bytes": 1 << 20})
    sink.open()
    sink.write(_batch(10, 12), deadline=_later())
    sink.close()
    assert abandoned.read_bytes() == b'{"seq": 1}\n{"seq": 2}\n'
