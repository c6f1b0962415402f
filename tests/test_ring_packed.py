"""``RingReader.read_packed``, the flusher's read: the records as msgpack bins, ready for an entry.

Against ``read_batch`` (the same records, positions and errors) on both
scanners (the native ``ringbuf._cread`` and the pure ``pack_bins``), and the
entry it makes against ``encode_entry`` byte for byte, down to the RESP the
flusher sends. The state machine of tests/test_ring_model.py reads packed
too (wrap-around, padding, commits, rollbacks, restarts).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ringbuf
from collector.common.stream import array_header, decode_entry, encode_entry, encode_packed_entry
from collector.daemon._budget import entry_bytes
from collector.daemon._xadd import pack_xadd_xlen
from ringbuf import _layout, _scan
from tests._rings import poke, ring_with, write_path  # noqa: F401

H = _layout.HEADER_SIZE
SCANNERS = ["native", "pure"]


def _reader(path: str, scanner: str, **kw: float) -> ringbuf.RingReader:
    r = ringbuf.RingReader.open(path, **kw)
    if scanner == "native":
        if _scan.scan_packed is None:
            r.close()
            pytest.skip("the native scanner is not built")
        # on the pure write path too: the reader would use pack_bins there, but the
        # frames are the same bytes, and the native scanner must read them alike
        r._scan_packed = _scan.scan_packed
    else:
        r._scan_packed = None
    return r


def _unpacked(p: ringbuf.PackedBatch) -> list[bytes]:
    data = array_header(p.n) + b"".join(p.parts)
    assert data == msgpack.packb(msgpack.unpackb(data), use_bin_type=True)  # canonical
    return list(msgpack.unpackb(data))


@pytest.mark.parametrize("scanner", SCANNERS)
def test_bin8_bin16_bin32_payloads_pack_as_msgpack_does(rings_dir: Path, scanner: str) -> None:
    sizes = [0, 1, 255, 256, 65535, 65536, 70000, 3]
    records = [bytes([i]) * n for i, n in enumerate(sizes)]
    w = ring_with(rings_dir, records, capacity_bytes=1 << 20, max_record_bytes=100_000)
    with _reader(str(w.path), scanner) as r:
        p = r.read_packed(1000)
        assert (p.n, p.first_seq, p.nbytes) == (len(records), 0, sum(sizes))
        assert array_header(p.n) + b"".join(p.parts) == msgpack.packb(records,
                                                                       use_bin_type=True)
        assert r.read_packed(1000).n == 0
    w.close()


# the native scanner reads TAG rings only (CRC rings are read with pack_bins)
@pytest.mark.parametrize(("scanner", "checksum"),
                         [("native", False), ("pure", False), ("pure", True)])
@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 600), min_size=1, max_size=60),
       calls=st.lists(st.tuples(st.integers(1, 30), st.one_of(st.none(), st.integers(0, 3000))),
                      min_size=1, max_size=12))
def test_same_records_and_positions_as_read_batch(tmp_path_factory: pytest.TempPathFactory,
                                                  scanner: str, checksum: bool,
                                                  sizes: list[int],
                                                  calls: list[tuple[int, int | None]]) -> None:
    rings_dir = tmp_path_factory.mktemp("rings")
    rings_dir.chmod(0o700)
    records = [bytes((i * 7 + j) & 0xFF for j in range(n)) for i, n in enumerate(sizes)]
    # wrap: fill and drain part of a small ring first, so later frames cross the end
    w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 14, max_record_bytes=1024,
                                  checksum=checksum)
    with ringbuf.RingReader.open(w.path) as r0:
        for _ in range(20):
            assert w.try_write(b"w" * 500)
        assert len(r0.read_batch(100)) == 20
        r0.commit()
    for rec in records:
        if not w.try_write(rec):
            break
    a = ringbuf.RingReader.open(w.path)
    b = _reader(str(w.path), scanner)
    try:
        for max_records, max_bytes in calls:
            want = a.read_batch(max_records, max_bytes)
            got = b.read_packed(max_records, max_bytes)
            assert _unpacked(got) == list(want)
            assert (got.n, got.first_seq, got.nbytes) == (len(want), want.first_seq,
                                                          want.nbytes)
            assert b._read_pos == a._read_pos and b._read_seq == a._read_seq
    finally:
        a.close()
        b.close()
        w.close()


@pytest.mark.parametrize("scanner", SCANNERS)
def test_good_records_first_then_the_corruption(rings_dir: Path, scanner: str) -> None:
    records = [b"r%d" % i * 10 for i in range(6)]
    w = ring_with(rings_dir, records)
    frame = 16 + ((len(records[0]) + 7) & ~7)
    poke(str(w.path), H + 4 * frame + 4, b"\0\0\0\0")  # record 4's TAG
    with _reader(str(w.path), scanner, settle_s=0.0) as r:
        assert _unpacked(r.read_packed(100)) == records[:4]
        with pytest.raises(ringbuf.RingCorrupted, match="tag"):
            r.read_packed(100)
        with pytest.raises(ringbuf.RingCorrupted):
            r.read_packed(100)  # every later call too: never skipped
    w.close()


@pytest.mark.parametrize("scanner", SCANNERS)
def test_a_frame_still_in_flight_settles(rings_dir: Path, scanner: str) -> None:
    records = [b"a" * 40, b"b" * 40, b"c" * 40]
    w = ring_with(rings_dir, records)
    at = H + 16 + 40  # record 1's length word
    with open(w.path, "rb") as f:
        good = os.pread(f.fileno(), 4, at)
    poke(str(w.path), at, b"\xff\xff\x00\x00")  # as if its bytes were not visible yet
    with _reader(str(w.path), scanner, settle_s=60.0) as r:
        assert _unpacked(r.read_packed(100)) == records[:1]
        assert r.read_packed(100).n == 0 and r.unsettled_looks == 1
        poke(str(w.path), at, good)
        assert _unpacked(r.read_packed(100)) == records[1:]
    poke(str(w.path), at, b"\xff\xff\x00\x00")
    with _reader(str(w.path), scanner, settle_s=0.0) as r2:
        assert _unpacked(r2.read_packed(100)) == records[:1]
        with pytest.raises(ringbuf.RingCorrupted, match="max_record_bytes"):
            r2.read_packed(100)
    w.close()


@settings(max_examples=40, deadline=None)
@given(records=st.lists(st.binary(max_size=70_000), max_size=40).filter(
    lambda rs: sum(map(len, rs)) < 400_000))
def test_the_packed_entry_is_encode_entrys_byte_for_byte(records: list[bytes]) -> None:
    packer = msgpack.Packer(use_bin_type=True)
    packed = [b"".join(packer.pack(r) for r in records[:5]),
              b"".join(packer.pack(r) for r in records[5:])]
    old = encode_entry("ab" * 16, 42, records)
    new = encode_packed_entry("ab" * 16, 42, len(records), packed)
    assert list(new) == list(old)
    assert {k: b"".join(v) if isinstance(v, list) else v for k, v in new.items()} == old
    assert entry_bytes(new) == entry_bytes(old)
    # what the flusher sends: the same bytes on the wire
    for wait in (None, (1, 500)):
        assert (b"".join(pack_xadd_xlen(b"k", new, wait=wait))
                == b"".join(pack_xadd_xlen(b"k", old, wait=wait)))
    entry = decode_entry({k.encode(): b"".join(v) if isinstance(v, list) else v
                          for k, v in new.items()})
    assert entry.records == records and entry.first_seq == 42
