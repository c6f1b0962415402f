"""Small rings for the ring and client tests: known records, raw bytes, reading back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
import pytest

import ringbuf
from collector.testing import account, wait_until
from ringbuf import _layout, _native

H = _layout.HEADER_SIZE


@pytest.fixture(params=["native", "pure"], autouse=True)
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test of a module that imports this runs on both paths (``ringbuf._native``):
    the environment is what a writer, reader or client created in the test (or in a
    process it starts) goes by. Without the extension the native half is skipped."""
    if request.param == "native":
        if not _native.BUILT:
            pytest.skip(_native.why_pure() or "native path unavailable")
        monkeypatch.delenv(_native.PURE_ENV, raising=False)
    else:
        monkeypatch.setenv(_native.PURE_ENV, "1")
    assert ringbuf.ring_path() == request.param
    return str(request.param)


def ring_with(rings_dir: Path, records: list[bytes], **kw: object) -> ringbuf.RingWriter:
    kw.setdefault("capacity_bytes", 1 << 14)
    kw.setdefault("max_record_bytes", 1024)
    w = ringbuf.RingWriter.create(rings_dir, **kw)  # type: ignore[arg-type]
    for r in records:
        assert w.try_write(r)
    return w


def poke(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def read_all(path: str, settle_s: float = 0.0) -> list[bytes]:
    """Every record in the ring; a bad frame raises at once unless ``settle_s``."""
    out: list[bytes] = []
    with ringbuf.RingReader.open(path, settle_s=settle_s) as r:
        while batch := r.read_batch(1000):
            out.extend(batch)
    return out


def corrupt_after_settling(r: ringbuf.RingReader) -> ringbuf.RingCorrupted:
    """Read ``r`` until its bad frame is called corrupt (once ``settle_s`` passed)."""
    def look() -> ringbuf.RingCorrupted | None:
        try:
            assert r.read_batch(100) == [], "a record after the bad frame"
        except ringbuf.RingCorrupted as exc:
            return exc
        return None
    return wait_until(look, 30, "the bad frame called corrupt")


# records of 0 to 295 bytes, so that frames of many sizes follow each other
RECORDS = [bytes([i]) * (i * 5 % 300) for i in range(40)]


def small(rings_dir: Path, **kw: Any) -> dict[str, Any]:
    """Options of an ``Analytics`` client on a 64 KiB ring in ``rings_dir``."""
    return {"rings_dir": str(rings_dir), "ring_capacity_bytes": 1 << 16,
            "max_record_bytes": 1024, **kw}


def drain(path: str) -> list[Any]:
    """Every record in the ring at ``path``, decoded (msgpack), and committed."""
    out: list[Any] = []
    with ringbuf.RingReader.open(path) as r:
        while batch := r.read_batch(1000):
            out.extend(msgpack.unpackb(b) for b in batch)
            r.commit()
    return out


def rings(rings_dir: Path) -> list[Path]:
    return sorted(rings_dir.glob("*" + ringbuf.RING_SUFFIX))


def check_sequence(got: list[int], n: int) -> None:
    """Report lost, duplicated and unexpected sequence numbers, then insist on none."""
    acc = account(got, range(n))
    assert acc.ok, str(acc)


# an authorization record like examples/authz_app.py's
AUTHZ = {
    "timestamp": 1764190000.123456,
    "username": "alice",
    "effect": "allow",
    "conclusion": "allowed by policy p-articles-read",
    "request": '{"subject":"users:alice","action":"read","resource":"resources:articles:1"}',
    "policies": '[{"id":"p-articles-read","effect":"allow"}]',
    "deciders": '[{"id":"p-articles-read","effect":"allow"}]',
    "request_id": "4f0c2a7e-9a51-4c11-8d7a-3c5b1e2f9a10",
    "latency_us": 137,
}
