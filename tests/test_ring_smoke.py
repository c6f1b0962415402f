"""A quick round trip through one ring (the full ring suite is in test_ring_*.py)."""

from __future__ import annotations

from pathlib import Path

import ringbuf


def test_write_read_commit_round_trip(rings_dir: Path) -> None:
    w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 16, max_record_bytes=1024)
    r = ringbuf.RingReader.open(w.path)
    sent = [bytes([i % 256]) * (i % 700) for i in range(500)]
    got: list[bytes] = []
    for p in sent:
        while not w.try_write(p):
            got.extend(r.read_batch(64))
            r.commit()
    while batch := r.read_batch(64):
        got.extend(batch)
        r.commit()
    assert got == sent
    assert r.stats().written == r.stats().committed == 500
