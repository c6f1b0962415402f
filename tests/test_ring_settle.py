"""A frame seen before its bytes (a weakly ordered CPU) is read once they arrive, never
quarantined; damage that persists is still ``RingCorrupted`` (``ringbuf._reader``, settling).

The frame's bytes are made valid by another process, only after the reader
has seen the new ``tail`` and found the frame bad: the order is fixed by the
test (no sleeps), which is what an ARM CPU may show a reader at random.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ringbuf

from ._rings import (
    RECORDS,
    H,
    corrupt_after_settling,
    poke,
    ring_with,
    write_path,  # noqa: F401 (both paths)
)


def _frame_at(records: list[bytes], i: int) -> tuple[int, int]:
    """(file offset, frame size) of the ``i``-th record's frame."""
    off = H
    for rec in records[:i]:
        off += 16 + ((len(rec) + 7) & ~7)
    return off, 16 + ((len(records[i]) + 7) & ~7)


def _write_from_another_process(path: str, offset: int, data: bytes) -> None:
    """The producer's late bytes arrive: written by a child process, waited for."""
    code = ("import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
            "os.pwrite(fd, bytes.fromhex(sys.argv[3]), int(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, path, str(offset), data.hex()], check=True)


@pytest.mark.parametrize("checksum, late", [
    (False, "frame"),  # nothing of the frame is visible yet (zeros: the first lap)
    (True, "payload"),  # its header is, its payload is not: only the CRC-32 sees it
])
def test_a_frame_seen_before_its_bytes_is_read_once_they_arrive(
        rings_dir: Path, checksum: bool, late: str) -> None:
    records = [r for r in RECORDS[:8] if r]
    w = ring_with(rings_dir, records, checksum=checksum)
    off, size = _frame_at(records, 5)
    start = off if late == "frame" else off + 16
    arrived = Path(w.path).read_bytes()[start:off + size]
    poke(w.path, start, bytes(len(arrived)))  # what the reader may see at first
    with ringbuf.RingReader.open(w.path, settle_s=3600) as r:
        assert list(r.read_batch(100)) == records[:5]
        for _ in range(3):  # in flight: nothing more, and no RingCorrupted
            assert r.read_batch(100) == []
        assert r.unsettled_looks == 3
        _write_from_another_process(w.path, start, arrived)
        assert list(r.read_batch(100)) == records[5:]
        r.commit()
        assert w.try_write(b"after")
        assert list(r.read_batch(100)) == [b"after"]
    w.close()


def test_the_first_frame_after_open_settles_too(rings_dir: Path) -> None:
    """A reader opened on a ring whose first unread frame is not visible yet."""
    records = RECORDS[1:4]
    w = ring_with(rings_dir, records)
    seq0 = Path(w.path).read_bytes()[H + 8:H + 16]
    poke(w.path, H + 8, b"\xff" * 8)  # a sequence number outside [committed, written]
    with ringbuf.RingReader.open(w.path, settle_s=3600) as r:
        assert r.read_batch(100) == [] and r.unsettled_looks == 1
        _write_from_another_process(w.path, H + 8, seq0)
        assert list(r.read_batch(100)) == records
    w.close()


def test_damage_that_persists_is_corrupt_after_settle_s(rings_dir: Path) -> None:
    records = RECORDS[1:6]
    w = ring_with(rings_dir, records)
    off, _ = _frame_at(records, 2)
    poke(w.path, off + 4, b"\x01\x02\x03\x04")  # the tag
    with ringbuf.RingReader.open(w.path, settle_s=0.05) as r:
        assert list(r.read_batch(100)) == records[:2]
        assert "frame tag" in str(corrupt_after_settling(r))
        assert r.unsettled_looks >= 1
        for _ in range(2):  # and from now on at every look: never skipped
            with pytest.raises(ringbuf.RingCorrupted, match="frame tag"):
                r.read_batch(100)
    w.close()


def test_settle_s_zero_calls_a_bad_frame_corrupt_at_once(rings_dir: Path) -> None:
    records = RECORDS[1:6]
    w = ring_with(rings_dir, records)
    off, _ = _frame_at(records, 0)
    poke(w.path, off + 4, b"\x01\x02\x03\x04")
    with ringbuf.RingReader.open(w.path, settle_s=0) as r:
        with pytest.raises(ringbuf.RingCorrupted, match="frame tag"):
            r.read_batch(100)
        assert r.unsettled_looks == 0
    with pytest.raises(ValueError, match="settle_s"):
        ringbuf.RingReader.open(w.path, settle_s=-1)
    w.close()
