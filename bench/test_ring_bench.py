"""pytest-benchmark figures for the ring (printed, never asserted).

Run: ``.venv/bin/python -m pytest bench/ --benchmark-only``. The plain
script ``python -m bench ring`` measures the same with a reader process and
compares with ``multiprocessing.Queue`` and ``faster_fifo``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import ormsgpack
import pytest

import ringbuf
from collector.testing import authz_record

N = 1000  # records per benchmark round


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[tuple[ringbuf.RingWriter, ringbuf.RingReader]]:
    d = Path("/dev/shm") if os.path.isdir("/dev/shm") else tmp_path
    d = d / f"bench-ring-{os.getpid()}-{tmp_path.name}"
    d.mkdir(mode=0o700)
    w = ringbuf.RingWriter.create(d, capacity_bytes=1 << 22)
    r = ringbuf.RingReader.open(w.path)
    try:
        yield w, r
    finally:
        r.close()
        w.close()
        os.unlink(w.path)
        d.rmdir()


def _drain(r: ringbuf.RingReader) -> None:
    while r.read_batch(4096):
        r.commit()


def _write_n(write: Any, payload: bytes) -> None:
    for _ in range(N):
        write(payload)


@pytest.mark.parametrize("variant", ["try_write (locked)", "write_unlocked"])
def test_write_1000(benchmark: Any, ring: Any, variant: str) -> None:
    """1000 writes of a ~450-byte record; divide by 1000 for one write."""
    w, r = ring
    fn = w.try_write if variant.startswith("try_write") else w.write_unlocked
    p = msgpack.packb(authz_record(0, 1))
    benchmark.extra_info["record_bytes"] = len(p)
    benchmark.pedantic(_write_n, args=(fn, p), setup=lambda: _drain(r), rounds=300)
    assert w.dropped == 0


@pytest.mark.parametrize("encoder", ["msgpack.packb", "ormsgpack.packb"])
def test_encode_and_write_1000(benchmark: Any, ring: Any, encoder: str) -> None:
    w, r = ring
    rec = authz_record(0, 1)
    pack = msgpack.packb if encoder == "msgpack.packb" else ormsgpack.packb
    write = w.try_write

    def run() -> None:
        for _ in range(N):
            write(pack(rec))

    benchmark.pedantic(run, setup=lambda: _drain(r), rounds=200)
    assert w.dropped == 0


def test_read_batch_1000(benchmark: Any, ring: Any) -> None:
    """read_batch(1000) + commit of 1000 ~450-byte records."""
    w, r = ring
    p = msgpack.packb(authz_record(0, 1))

    def fill() -> None:
        _drain(r)
        for _ in range(N):
            w.write_unlocked(p)

    def read() -> None:
        assert len(r.read_batch(N)) == N
        r.commit()

    benchmark.pedantic(read, setup=fill, rounds=300)
