"""The native fast path writes what the pure path writes, byte for byte (``ringbuf._native``).

Generated records (hypothesis) go through both paths: the C encoder's
output equals ``ormsgpack.packb`` (and ``msgpack.packb``) for every type it
takes; two rings fed the same records, one by the native writer and one by
the pure one, hold the same data area, ``tail`` and ``written`` after every
write, drain and wrap; what the C encoder does not take (a conversion, a
big int, a str subclass, a non-str key, a lone surrogate, deep nesting) goes
to the pure path and still comes out the same. Without the extension built
these tests are skipped (in CI a skip is a failure: the extension is built).
"""

from __future__ import annotations

import datetime
import os
import sys
import sysconfig
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import ormsgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ringbuf
from collector import Analytics
from collector.testing import wait_until
from ringbuf import _native

from ._rings import AUTHZ, H

pytestmark = pytest.mark.skipif(not _native.BUILT, reason="the C extension is not built")

_EDGES = [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, -32, -33, -128, -129, -32768,
          -32769, -(2**31), -(2**31) - 1, 2**63 - 1, 2**63, 2**64 - 1, "x" * 31, "x" * 32,
          "x" * 255, "x" * 256, b"y" * 255, b"y" * 256, float("inf"), -0.0, (), [], {}]
_BIG = ["x" * 65535, "x" * 65536, b"y" * 65535, b"y" * 65536, list(range(65536)),
        {str(i): i for i in range(65536)}]


def _strategy(edges: list[Any]) -> st.SearchStrategy[dict[str, Any]]:
    scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
               | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=40)
               | st.sampled_from(edges))
    values = st.recursive(
        scalars,
        lambda inner: (st.lists(inner, max_size=20) | st.tuples(inner, inner)
                       | st.dictionaries(st.text(max_size=10), inner, max_size=20)),
        max_leaves=40)
    return st.dictionaries(st.text(max_size=20), values, max_size=20)


_records = _strategy(_EDGES)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


_not_taken = [
    {"when": datetime.datetime(2026, 12, 1, 23, 0, tzinfo=datetime.UTC)},
    {"id": uuid.UUID(int=7)},
    {"big": 2**64},
    {"small": -(2**63) - 1},
    {"sub": type("S", (str,), {})("abc")},
    {1: "non-str key"},
    {"surrogate": "\ud800"},
    {"deep": _nested(40)},
    {"set": {3, 1, 2}},
]


@settings(max_examples=150, deadline=None)
@given(_records)
def test_the_encoder_writes_what_ormsgpack_writes(record: dict[str, Any]) -> None:
    got = _native.encode(record)
    assert got is not None
    assert got == ormsgpack.packb(record) == msgpack.packb(record)


@pytest.mark.parametrize("value", _BIG, ids=lambda v: f"{type(v).__name__}-{len(v)}")
def test_the_encoder_writes_16_and_32_bit_lengths_as_ormsgpack(value: Any) -> None:
    record = {"v": value}
    assert _native.encode(record) == ormsgpack.packb(record) == msgpack.packb(record)


@pytest.mark.parametrize("record", _not_taken, ids=lambda r: next(iter(r)).__class__.__name__
                         + ":" + str(next(iter(r))))
def test_what_the_encoder_does_not_take_is_declined(record: dict[Any, Any]) -> None:
    assert _native.encode(record) is None


def _pair(d: str) -> tuple[ringbuf.RingWriter, ringbuf.RingWriter]:
    opts: dict[str, Any] = {"capacity_bytes": 1 << 13, "max_record_bytes": 2000}
    return (ringbuf.RingWriter.create(d, native=True, **opts),
            ringbuf.RingWriter.create(d, native=False, **opts))


def _state(w: ringbuf.RingWriter) -> tuple[bytes, bytes]:
    """tail and written, and the published data (``[head, tail)``): bytes past tail
    are free space, where a declined native encoding may have left some."""
    raw = Path(w.path).read_bytes()
    tail, head = (int.from_bytes(raw[at:at + 8], "little") for at in (128, 256))
    data = raw[H:]
    cap = len(data)
    start, end = head % cap, tail % cap
    if tail - head == cap or (start >= end and tail != head):
        published = data[start:] + data[:end]
    else:
        published = data[start:end]
    return raw[128:144], published


def _write(w: ringbuf.RingWriter, record: dict[str, Any]) -> bool | str:
    try:
        done = w.write_record(record)
        if done is None:
            done = w.write_unlocked(ormsgpack.packb(record))
        return done
    except ringbuf.RecordTooLarge:
        return "too large"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_records | st.just(AUTHZ), min_size=1, max_size=60),
       st.lists(st.integers(1, 8), min_size=1, max_size=10))
def test_native_and_pure_rings_hold_the_same_bytes(
        rings_dir: Path, records: list[dict[str, Any]], drains: list[int]) -> None:
    native, pure = _pair(str(rings_dir))
    assert native.native and not pure.native
    readers = [ringbuf.RingReader.open(w.path) for w in (native, pure)]
    try:
        for i, rec in enumerate(records):
            assert _write(native, rec) == _write(pure, rec)
            assert _state(native) == _state(pure)
            if i % drains[i % len(drains)] == 0:  # drain now and then: the ring wraps
                got = [list(r.read_batch(5)) for r in readers]
                assert got[0] == got[1]
                for r in readers:
                    r.commit()
        assert native.written == pure.written
    finally:
        for r in readers:
            r.close()
        native.close()
        pure.close()
        for f in rings_dir.iterdir():
            f.unlink()


def _client_bytes(rings_dir: Path, pure: bool, records: list[dict[Any, Any]]) -> bytes:
    os.environ[_native.PURE_ENV] = "1" if pure else "0"
    try:
        a = Analytics({"rings_dir": str(rings_dir), "ring_capacity_bytes": 1 << 16,
                       "max_record_bytes": 4096})
    finally:
        del os.environ[_native.PURE_ENV]
    assert a.stats().path == ("pure" if pure else "native")
    for rec in records:
        assert a.record_hit(rec)
    raw = Path(a.ring_path).read_bytes()  # type: ignore[arg-type]
    a.stop()
    tail = int.from_bytes(raw[128:136], "little")
    return raw[128:144] + raw[H:H + tail]  # nothing committed, no lap: all of it is published


def test_records_the_encoder_declines_come_out_the_same(rings_dir: Path) -> None:
    records = [r for r in _not_taken if all(isinstance(k, str) for k in r)] + [AUTHZ] * 3
    # refused on both paths (TypeError naming the field): no 64-bit int, not UTF-8
    records = [r for r in records if not {"surrogate", "big", "small"} & set(r)]
    assert (_client_bytes(rings_dir, False, records)
            == _client_bytes(rings_dir, True, records))


def test_a_closed_writer_declines(rings_dir: Path) -> None:
    w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 13, max_record_bytes=1024,
                                  native=True)
    assert w.write_record({"a": 1}) is None  # the first write goes the careful way
    assert w.try_write(b"\x81\xa1a\x01")
    assert w.write_record({"a": 1}) is True
    take = w.write_record
    w.close()
    assert take({"a": 1}) is None  # a call that raced the close: declined, never written
    assert w.write_record({"a": 1}) is None


def test_native_true_needs_the_extension_and_no_checksum(rings_dir: Path) -> None:
    with pytest.raises(ValueError, match="checksum"):
        ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 13, max_record_bytes=1024,
                                  native=True, checksum=True)
    w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 13, max_record_bytes=1024,
                                  checksum=True)
    assert not w.native and w.write_record({"a": 1}) is None
    w.close()


# The encoder's inline paths (ringbuf/_cenc.h) change at these lengths and values: the
# overlapping copies (4, 8, 16, 32 bytes; a loop of 32 up to 256, libc above), fixstr
# and str8/16, and the one-digit int read in place (|v| < 2**30) or through the C API.
_LENGTHS = [*range(0, 70), 95, 96, 97, 127, 128, 129, 255, 256, 257, 300, 65535, 65536]
_INTS = [2**30 - 1, 2**30, 2**30 + 1, -(2**30) + 1, -(2**30), -(2**30) - 1, 2**60, -(2**60)]


@pytest.mark.parametrize("n", _LENGTHS)
def test_strings_of_every_copy_length_encode_as_ormsgpack(n: int) -> None:
    ascii_, other = "".join(chr(97 + i % 26) for i in range(n)), "é" * n
    for s in (ascii_, other):
        for record in ({s: s}, {"k": [s, s.encode()], s[:40]: (s,)}):
            assert _native.encode(record) == ormsgpack.packb(record), (n, record.keys())


def test_ints_on_both_sides_of_the_inline_read_encode_as_ormsgpack() -> None:
    record = {str(v): v for v in _INTS} | {"list": _INTS}
    assert _native.encode(record) == ormsgpack.packb(record)


@pytest.mark.parametrize("record", [AUTHZ, {"s": "x" * 31}, {"s": "x" * 32}, {"i": 2**31},
                                    {"f": 1.5, "n": None, "t": True}, {"b": b"z" * 300},
                                    {"s": "é" * 20, "l": [1, -1, 2**40]}])
def test_a_record_that_fills_max_record_bytes_exactly_is_taken(rings_dir: Path,
                                                              record: dict[str, Any]) -> None:
    """Every inline write checks the room it needs and no more: a payload of exactly
    ``max_record_bytes`` is written natively, one byte more is declined."""
    payload = ormsgpack.packb(record)
    for limit, taken in ((len(payload), True), (len(payload) - 1, None)):
        w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 13,
                                      max_record_bytes=max(limit, 16), native=True)
        r = ringbuf.RingReader.open(w.path)
        try:
            assert w.try_write(b"\xc0")  # the first write goes the careful way
            if limit < 16:
                continue
            assert w.write_record(record) is taken, limit
            got = list(r.read_batch(5))
            assert got[-1] == (payload if taken else b"\xc0")
        finally:
            r.close()
            w.close()


def test_the_dict_walk_in_place_is_on_where_its_layout_is_known() -> None:
    """CPython 3.11 to 3.13 with the GIL: the encoder walks a dict's entries in
    place (checked against PyDict_Next when the extension is imported)."""
    from ringbuf import _cring  # type: ignore[attr-defined]

    known = ((3, 11) <= sys.version_info[:2] <= (3, 13)
             and not sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert _cring.dict_walk == int(known)


class _Obj:
    def __init__(self) -> None:
        self.a, self.b, self.c = 1, "two", [3.0]


def _with_holes(n: int) -> dict[str, Any]:
    d = {f"k{i}": i for i in range(n)}
    for i in range(0, n, 3):
        del d[f"k{i}"]
    d["late"] = "after the holes"
    return d


@pytest.mark.parametrize("record", [
    _with_holes(10), _with_holes(300), {"inner": _with_holes(20)},
    vars(_Obj()),  # a split table (an instance's __dict__): walked by PyDict_Next
    {"nested": vars(_Obj())},
    dict.fromkeys(["x", "y"], None) | {"z": {}},
], ids=["holes-10", "holes-300", "nested-holes", "split", "nested-split", "fromkeys"])
def test_dicts_with_deleted_entries_and_split_tables_encode_as_ormsgpack(
        record: dict[str, Any]) -> None:
    assert _native.encode(record) == ormsgpack.packb(record)


def test_a_non_str_key_after_str_keys_is_declined() -> None:
    record: dict[Any, Any] = {"a": 1, "b": 2}
    record[3] = "three"  # the keys table becomes a general one
    assert _native.encode(record) is None
    del record[3]
    assert _native.encode(record) == ormsgpack.packb(record)  # still general, via PyDict_Next


def _past(seconds: float) -> None:
    """Wait until ``seconds`` of the monotonic clock have gone by (a deadline to pass)."""
    end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= end, 5, "the clock to pass the look's deadline",
               interval=0.005)


@pytest.mark.parametrize("how", ["removed", "replaced", "resized"])
def test_the_native_writer_looks_at_its_file_itself_and_declines_only_when_it_is_gone(
        rings_dir: Path, how: str) -> None:
    """With ``on_gone`` the look at the file (every ``check_interval_s``) is made in C:
    a file that is fine keeps the record on the native path; one removed, replaced or
    resized is declined, and the careful path hands the write to ``on_gone``."""
    gone: list[str] = []

    def on_gone(payload: bytes, why: str) -> bool:
        gone.append(why)
        return False

    w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 16, max_record_bytes=1024,
                                  native=True, on_gone=on_gone, check_interval_s=0.05)
    try:
        assert w.try_write(b"\xc0")  # the careful way: the first look, the deadline set
        assert w.write_record({"a": 1}) is True
        _past(0.1)
        assert w.write_record({"a": 2}) is True  # due, looked at in C: fine
        assert w.write_record({"a": 3}) is True
        path = Path(w.path)
        if how == "removed":
            path.unlink()
        elif how == "replaced":
            path.rename(rings_dir / "moved")
            path.write_bytes(b"")
        else:
            os.truncate(path, 8192)  # never written to past it: no fault
        _past(0.1)
        assert w.write_record({"a": 4}) is None
        assert w.write_unlocked(ormsgpack.packb({"a": 4})) is False
        assert len(gone) == 1
    finally:
        w.abandon()
