"""Junk in a ring's header, its frames or its payloads: RingCorrupted, never garbage."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import ringbuf

from ._rings import (
    RECORDS,
    H,
    corrupt_after_settling,
    poke,
    read_all,
    ring_with,
    write_path,  # noqa: F401 (both paths)
)

# -- junk in the header ----------------------------------------------------------

@pytest.mark.parametrize("offset, data, error, message", [
    (0, b"XXXXXXXX", ringbuf.NotARing, "magic"),
    (8, struct.pack("<I", 0), ringbuf.RingVersionMismatch, "version 0"),
    (12, struct.pack("<I", 512), ringbuf.RingCorrupted, "header_size 512"),
    (16, struct.pack("<Q", 12345), ringbuf.RingCorrupted, "capacity 12345"),
    (16, struct.pack("<Q", 1 << 15), ringbuf.RingCorrupted, "file size"),
    (16, struct.pack("<Q", 2**64 - 1), ringbuf.RingCorrupted, "capacity"),
    (24, struct.pack("<I", 0), ringbuf.RingCorrupted, "max_record_bytes 0"),
    (24, struct.pack("<I", 1 << 20), ringbuf.RingCorrupted, "max_record_bytes"),
    (28, struct.pack("<I", 6), ringbuf.RingCorrupted, "flag"),
    (256, struct.pack("<Q", 3), ringbuf.RingCorrupted, "impossible positions"),  # head
    (256, struct.pack("<Q", 1 << 40), ringbuf.RingCorrupted, "impossible positions"),
    (128, struct.pack("<Q", 5), ringbuf.RingCorrupted, "impossible positions"),  # tail
    (128, struct.pack("<Q", 1 << 20), ringbuf.RingCorrupted, "impossible positions"),
])
def test_junk_in_the_header(rings_dir: Path, offset: int, data: bytes,
                            error: type[Exception], message: str) -> None:
    w = ring_with(rings_dir, RECORDS[:10])
    poke(w.path, offset, data)
    with pytest.raises(error, match=message):
        ringbuf.RingReader.open(w.path)
    assert ringbuf.discover(rings_dir) == []  # skipped, not listed
    w.close()


def test_junk_positions_after_open(rings_dir: Path) -> None:
    """Positions that go bad while a reader has the ring open: read_batch raises."""
    w = ring_with(rings_dir, RECORDS[:10])
    r = ringbuf.RingReader.open(w.path)
    for tail in (1 << 30, 8 * 3 + 1):
        poke(w.path, 128, struct.pack("<Q", tail))
        with pytest.raises(ringbuf.RingCorrupted, match="impossible positions"):
            r.read_batch(10)
    r.close()
    w.abandon()


# -- junk in frames --------------------------------------------------------------

def _frame_offsets(records: list[bytes]) -> list[int]:
    out, pos = [], H
    for rec in records:
        out.append(pos)
        pos += 16 + ((len(rec) + 7) & ~7)
    return out


@pytest.mark.parametrize("field, value, message", [
    ("length", 5000, "exceeds max_record_bytes"),
    ("length", 1000, "runs past the published data"),
    ("length", 0xFFFFFFFF, "padding marker|exceeds"),
    ("check", 0x12345678, "frame tag"),
    ("seq", 99, "sequence 99 where 3 was expected"),
])
def test_junk_in_a_frame_header(rings_dir: Path, field: str, value: int, message: str) -> None:
    records = RECORDS[:6]
    w = ring_with(rings_dir, records)
    at = _frame_offsets(records)
    victim = at[3] if field != "length" or value != 1000 else at[5]
    fmt, where = {"length": ("<I", 0), "check": ("<I", 4), "seq": ("<Q", 8)}[field]
    poke(w.path, victim + where, struct.pack(fmt, value))
    with ringbuf.RingReader.open(w.path, settle_s=0.2) as r:
        good = r.read_batch(100)  # the valid records before the bad frame
        n_good = 5 if victim == at[5] else 3
        assert list(good) == records[:n_good]
        assert r.read_batch(100) == [] and r.unsettled_looks == 1  # in flight, maybe
        assert re.search(message, str(corrupt_after_settling(r)))
        with pytest.raises(ringbuf.RingCorrupted):  # and again: never skipped silently
            r.read_batch(100)
    w.close()


def test_junk_in_the_first_frame_after_reopen(rings_dir: Path) -> None:
    records = RECORDS[:6]
    w = ring_with(rings_dir, records)
    poke(w.path, H + 8, struct.pack("<Q", 1 << 50))  # seq of frame 0
    with ringbuf.RingReader.open(w.path, settle_s=0) as r:
        with pytest.raises(ringbuf.RingCorrupted, match="outside"):
            r.read_batch(10)
    w.close()


def test_checksum_catches_a_flipped_payload_byte(rings_dir: Path) -> None:
    records = [b"payload-%03d" % i * 3 for i in range(8)]
    w = ring_with(rings_dir, records, checksum=True)
    at = _frame_offsets(records)
    raw = Path(w.path).read_bytes()
    poke(w.path, at[4] + 16 + 5, bytes([raw[at[4] + 16 + 5] ^ 0x01]))
    with ringbuf.RingReader.open(w.path, settle_s=0) as r:
        assert list(r.read_batch(100)) == records[:4]
        with pytest.raises(ringbuf.RingCorrupted, match="CRC-32"):
            r.read_batch(100)
    # Without checksum the same flip goes unnoticed: that is what checksum=True is for.
    w2 = ring_with(rings_dir, records, checksum=False)
    poke(w2.path, at[4] + 16 + 5, bytes([raw[at[4] + 16 + 5] ^ 0x01]))
    assert read_all(w2.path)[4] != records[4]
    w.close()
    w2.close()


def test_checksum_frames_carry_the_crc(rings_dir: Path) -> None:
    w = ring_with(rings_dir, [b"hello"], checksum=True)
    raw = Path(w.path).read_bytes()
    assert struct.unpack_from("<IIQ", raw, H) == (5, zlib.crc32(b"hello"), 0)
    w.close()


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_flipped_byte_with_checksum_is_caught_or_harmless(data: st.DataObject) -> None:
    """Flip one byte anywhere in the published data of a wrapped ring (checksum=True).

    Reading everything either raises RingCorrupted or returns records that
    are exactly the ones written (a byte of zero padding is not covered by
    the CRC and changes nothing). Never garbage.
    """
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o700)
        w = ringbuf.RingWriter.create(d, capacity_bytes=4096, max_record_bytes=700,
                                      checksum=True)
        r = ringbuf.RingReader.open(w.path)
        # Fill to the brim, drain, then fill again: the published data wraps.
        first = data.draw(st.integers(0, 700))
        while w.try_write(bytes(first)):
            pass
        r.read_batch(1000)
        r.commit()
        sizes = data.draw(st.lists(st.integers(0, 700), min_size=1, max_size=12))
        written: list[bytes] = []
        for i, n in enumerate(sizes):
            rec = bytes([(i * 13 + j) & 0xFF for j in range(n)])
            if w.try_write(rec):
                written.append(rec)
        r.close()
        head = _word(w.path, 256)
        tail = _word(w.path, 128)
        if tail == head:
            w.close()
            return
        event("wrapped" if tail // 4096 != head // 4096 else "not wrapped")
        pos = data.draw(st.integers(head, tail - 1))
        off = H + pos % 4096
        old = Path(w.path).read_bytes()[off]
        poke(w.path, off, bytes([old ^ data.draw(st.integers(1, 255))]))
        got: list[bytes] = []
        try:
            got = read_all(w.path)
        except ringbuf.RingCorrupted:
            event("flip caught")
        else:
            event("flip harmless (padding)")
            assert got == written
        w.close()


def _word(path: str, offset: int) -> int:
    return struct.unpack_from("<Q", Path(path).read_bytes(), offset)[0]
