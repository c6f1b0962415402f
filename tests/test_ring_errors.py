"""Bad input, bad files and junk in a ring: clear errors, never a crash or garbage."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import ringbuf
from ringbuf import _files, _layout

H = _layout.HEADER_SIZE


def _ring_with(rings_dir: Path, records: list[bytes], **kw: object) -> ringbuf.RingWriter:
    kw.setdefault("capacity_bytes", 1 << 14)
    kw.setdefault("max_record_bytes", 1024)
    w = ringbuf.RingWriter.create(rings_dir, **kw)  # type: ignore[arg-type]
    for r in records:
        assert w.try_write(r)
    return w


def _poke(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _read_all(path: str) -> list[bytes]:
    out: list[bytes] = []
    with ringbuf.RingReader.open(path) as r:
        while batch := r.read_batch(1000):
            out.extend(batch)
    return out


RECORDS = [bytes([i]) * (i * 5 % 300) for i in range(40)]


# -- bad arguments -------------------------------------------------------------

def test_oversize_payload_is_refused_and_counted(rings_dir: Path) -> None:
    for checksum in (False, True):
        w = _ring_with(rings_dir, [], max_record_bytes=100, checksum=checksum)
        assert w.try_write(b"x" * 100)
        with pytest.raises(ringbuf.RecordTooLarge, match=r"101 bytes.*max_record_bytes=100"):
            w.try_write(b"x" * 101)
        with pytest.raises(ValueError):  # RecordTooLarge is also a ValueError
            w.write_unlocked(b"x" * 5000)
        with ringbuf.RingReader.open(w.path) as r:
            s = r.stats()
            assert (s.dropped_oversize, s.dropped_full, s.written) == (2, 0, 1)
            assert list(r.read_batch(10)) == [b"x" * 100]
        w.close()


@pytest.mark.parametrize("bad", ["text", "abc", 12, None, memoryview(b"abc"), [1, 2], b"ok"])
def test_non_bytes_payload_is_a_type_error(rings_dir: Path, bad: object) -> None:
    for checksum in (False, True):
        w = _ring_with(rings_dir, [], checksum=checksum)
        assert w.try_write(b"abc")  # the fast path has seen this size
        if bad == b"ok":
            assert w.try_write(bytearray(b"def"))  # bytearray is accepted
            w.close()
            continue
        for fn in (w.try_write, w.write_unlocked):
            with pytest.raises(TypeError, match="payload must be bytes"):
                fn(bad)  # type: ignore[arg-type]
        assert w.try_write(b"ghi")  # the ring is still usable
        assert _read_all(w.path) == [b"abc", b"ghi"]
        w.close()


@pytest.mark.parametrize("capacity, rule", [
    (5000, "not a power of two"),
    (1 << 12 | 1, "not a power of two"),
    (1024, "between 4096"),
    (0, "between 4096"),
    (-4096, "between 4096"),
    (1 << 41, "between 4096"),
])
def test_bad_capacity(rings_dir: Path, capacity: int, rule: str) -> None:
    with pytest.raises(ValueError, match=rf"capacity_bytes={capacity}\b.*{rule}"):
        ringbuf.RingWriter.create(rings_dir, capacity_bytes=capacity)
    assert os.listdir(rings_dir) == []


def test_capacity_too_small_for_max_record(rings_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"capacity_bytes=4096 is too small for "
                                         r"max_record_bytes=3000.*at least"):
        ringbuf.RingWriter.create(rings_dir, capacity_bytes=4096, max_record_bytes=3000)
    with pytest.raises(TypeError, match="capacity_bytes must be an int"):
        ringbuf.RingWriter.create(rings_dir, capacity_bytes=4096.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_record_bytes=0"):
        ringbuf.RingWriter.create(rings_dir, capacity_bytes=4096, max_record_bytes=0)


def test_bad_read_arguments(rings_dir: Path) -> None:
    w = _ring_with(rings_dir, [b"a"])
    with ringbuf.RingReader.open(w.path) as r:
        with pytest.raises(ValueError, match="max_records=0"):
            r.read_batch(0)
        with pytest.raises(ValueError, match="max_bytes=-1"):
            r.read_batch(1, -1)
    w.close()


def test_closed_writer_refuses_writes(rings_dir: Path) -> None:
    w = _ring_with(rings_dir, [b"a"])
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.try_write(b"b")
    with ringbuf.RingReader.open(w.path) as r:
        assert r.stats().closed


# -- files that are not (our) rings --------------------------------------------

def test_not_a_ring(rings_dir: Path) -> None:
    short = rings_dir / "short.ring"
    short.write_bytes(b"hello")
    junk = rings_dir / "junk.ring"
    junk.write_bytes(os.urandom(H + 4096))
    (rings_dir / "dir.ring").mkdir()
    for p in (short, junk):
        p.chmod(0o600)
    with pytest.raises(ringbuf.NotARing, match="shorter than a ring header"):
        ringbuf.RingReader.open(short)
    with pytest.raises(ringbuf.NotARing, match="magic"):
        ringbuf.RingReader.open(junk)
    with pytest.raises(ringbuf.NotARing, match="directory"):
        ringbuf.RingReader.open(rings_dir / "dir.ring")
    with pytest.raises(FileNotFoundError):
        ringbuf.RingReader.open(rings_dir / "missing.ring")


def test_ring_of_another_version(rings_dir: Path) -> None:
    w = _ring_with(rings_dir, [b"a"])
    _poke(w.path, 8, struct.pack("<I", ringbuf.LAYOUT_VERSION + 1))
    with pytest.raises(ringbuf.RingVersionMismatch,
                       match=rf"version {ringbuf.LAYOUT_VERSION + 1}.*version "
                             rf"{ringbuf.LAYOUT_VERSION} only"):
        ringbuf.RingReader.open(w.path)
    w.close()


def test_ring_of_another_user_or_writable_by_others(rings_dir: Path) -> None:
    assert os.geteuid() == 0, "the tests run as root (they chown a ring to uid 65534)"
    w = _ring_with(rings_dir, [b"a"])
    os.chown(w.path, 65534, 65534)
    with pytest.raises(ringbuf.RingPermissionError, match="owned by uid 65534"):
        ringbuf.RingReader.open(w.path)
    with pytest.raises(PermissionError):  # also a PermissionError
        ringbuf.RingReader.open(w.path)
    os.chown(w.path, os.geteuid(), os.getegid())
    for mode in (0o620, 0o602, 0o666):
        os.chmod(w.path, mode)
        with pytest.raises(ringbuf.RingPermissionError, match=f"mode {mode:04o}"):
            ringbuf.RingReader.open(w.path)
    os.chmod(w.path, 0o600)
    assert _read_all(w.path) == [b"a"]
    w.close()


def test_unsafe_rings_directory(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir(mode=0o777)
    d.chmod(0o777)
    with pytest.raises(ringbuf.RingPermissionError, match="mode 0777"):
        ringbuf.RingWriter.create(d, capacity_bytes=4096, max_record_bytes=100)
    d2 = tmp_path / "theirs"
    d2.mkdir(mode=0o700)
    os.chown(d2, 65534, 65534)
    with pytest.raises(ringbuf.RingPermissionError, match="owned by uid 65534"):
        ringbuf.RingWriter.create(d2, capacity_bytes=4096, max_record_bytes=100)


def test_new_ring_is_private(rings_dir: Path) -> None:
    w = _ring_with(rings_dir, [])
    assert os.stat(w.path).st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        ringbuf.RingWriter.create(rings_dir, name=os.path.basename(w.path))
    with pytest.raises(ValueError, match="plain file name"):
        ringbuf.RingWriter.create(rings_dir, name="../x.ring")
    w.close()


# -- liveness ------------------------------------------------------------------

def test_pid_reuse_is_reported_dead(rings_dir: Path) -> None:
    """A live pid whose start time differs from the header's is not the producer."""
    w = _ring_with(rings_dir, [b"a"])
    with ringbuf.RingReader.open(w.path) as r:
        assert r.stats().producer_alive
    real = struct.unpack_from("<d", Path(w.path).read_bytes(), 56)[0]
    _poke(w.path, 56, struct.pack("<d", real - 3600.0))  # this pid, another start time
    with ringbuf.RingReader.open(w.path) as r:
        s = r.stats()
        assert s.producer_pid == os.getpid()
        assert not s.producer_alive
    w.close()


def test_exited_producer_is_dead(rings_dir: Path) -> None:
    code = ("import sys, ringbuf; w = ringbuf.RingWriter.create(sys.argv[1], "
            "capacity_bytes=4096, max_record_bytes=64); w.try_write(b'x'); print(w.path)")
    out = subprocess.run([sys.executable, "-c", code, str(rings_dir)], check=True,
                         capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.strip()
    with ringbuf.RingReader.open(out) as r:
        s = r.stats()
        assert not s.producer_alive and not s.closed and s.written == 1
        assert list(r.read_batch(5)) == [b"x"]


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
    w = _ring_with(rings_dir, RECORDS[:10])
    _poke(w.path, offset, data)
    with pytest.raises(error, match=message):
        ringbuf.RingReader.open(w.path)
    assert ringbuf.discover(rings_dir) == []  # skipped, not listed
    w.close()


def test_junk_positions_after_open(rings_dir: Path) -> None:
    """Positions that go bad while a reader has the ring open: read_batch raises."""
    w = _ring_with(rings_dir, RECORDS[:10])
    r = ringbuf.RingReader.open(w.path)
    for tail in (1 << 30, 8 * 3 + 1):
        _poke(w.path, 128, struct.pack("<Q", tail))
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
    w = _ring_with(rings_dir, records)
    at = _frame_offsets(records)
    victim = at[3] if field != "length" or value != 1000 else at[5]
    fmt, where = {"length": ("<I", 0), "check": ("<I", 4), "seq": ("<Q", 8)}[field]
    _poke(w.path, victim + where, struct.pack(fmt, value))
    with ringbuf.RingReader.open(w.path) as r:
        good = r.read_batch(100)  # the valid records before the bad frame
        n_good = 5 if victim == at[5] else 3
        assert list(good) == records[:n_good]
        with pytest.raises(ringbuf.RingCorrupted, match=message):
            r.read_batch(100)
        with pytest.raises(ringbuf.RingCorrupted):  # and again: never skipped silently
            r.read_batch(100)
    w.close()


def test_junk_in_the_first_frame_after_reopen(rings_dir: Path) -> None:
    records = RECORDS[:6]
    w = _ring_with(rings_dir, records)
    _poke(w.path, H + 8, struct.pack("<Q", 1 << 50))  # seq of frame 0
    with ringbuf.RingReader.open(w.path) as r:
        with pytest.raises(ringbuf.RingCorrupted, match="outside"):
            r.read_batch(10)
    w.close()


def test_checksum_catches_a_flipped_payload_byte(rings_dir: Path) -> None:
    records = [b"payload-%03d" % i * 3 for i in range(8)]
    w = _ring_with(rings_dir, records, checksum=True)
    at = _frame_offsets(records)
    raw = Path(w.path).read_bytes()
    _poke(w.path, at[4] + 16 + 5, bytes([raw[at[4] + 16 + 5] ^ 0x01]))
    with ringbuf.RingReader.open(w.path) as r:
        assert list(r.read_batch(100)) == records[:4]
        with pytest.raises(ringbuf.RingCorrupted, match="CRC-32"):
            r.read_batch(100)
    # Without checksum the same flip goes unnoticed: that is what checksum=True is for.
    w2 = _ring_with(rings_dir, records, checksum=False)
    _poke(w2.path, at[4] + 16 + 5, bytes([raw[at[4] + 16 + 5] ^ 0x01]))
    assert _read_all(w2.path)[4] != records[4]
    w.close()
    w2.close()


def test_checksum_frames_carry_the_crc(rings_dir: Path) -> None:
    w = _ring_with(rings_dir, [b"hello"], checksum=True)
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
        _poke(w.path, off, bytes([old ^ data.draw(st.integers(1, 255))]))
        got: list[bytes] = []
        try:
            got = _read_all(w.path)
        except ringbuf.RingCorrupted:
            event("flip caught")
        else:
            event("flip harmless (padding)")
            assert got == written
        w.close()


def _word(path: str, offset: int) -> int:
    return struct.unpack_from("<Q", Path(path).read_bytes(), offset)[0]


# -- discover ------------------------------------------------------------------------

def test_discover_lists_rings_with_stats_and_skips_junk(rings_dir: Path) -> None:
    a = _ring_with(rings_dir, [b"1", b"2", b"3"], name="a.ring")
    b = _ring_with(rings_dir, [], name="b.ring", checksum=True)
    with ringbuf.RingReader.open(a.path) as r:
        r.read_batch(2)
        r.commit()
    b.close()
    (rings_dir / "junk.ring").write_bytes(b"not a ring at all" * 500)
    (rings_dir / "empty.ring").write_bytes(b"")
    (rings_dir / "dir.ring").mkdir()
    (rings_dir / "notes.txt").write_text("hello")
    (rings_dir / ".a.ring.1234.tmp").write_bytes(Path(a.path).read_bytes())
    other = _ring_with(rings_dir, [], name="other.ring")
    os.chmod(other.path, 0o666)
    os.mkfifo(rings_dir / "fifo.ring", 0o600)
    t0 = time.monotonic()
    found = ringbuf.discover(rings_dir)
    assert time.monotonic() - t0 < 30  # a FIFO must not block discover
    assert [Path(s.path).name for s in found] == ["a.ring", "b.ring"]
    sa, sb = found
    assert (sa.written, sa.committed, sa.pending, sa.dropped) == (3, 2, 1, 0)
    assert sa.producer_alive and not sa.closed and sa.ring_id == a.ring_id
    assert sa.capacity == 1 << 14 and sa.max_record_bytes == 1024
    assert 0 < sa.bytes_used and 0 < sa.fill_ratio < 1
    assert sb.closed and sb.written == 0 and sb.bytes_used == 0
    assert ringbuf.discover(rings_dir / "missing") == []
    a.close()
    other.close()


# -- counters --------------------------------------------------------------------------

def test_writer_counters_and_full_policy(rings_dir: Path) -> None:
    w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=4096, max_record_bytes=1000)
    quiet = ringbuf.RingWriter.create(rings_dir, capacity_bytes=4096, max_record_bytes=1000,
                                      count_full_drops=False)
    for ring in (w, quiet):
        n = 0
        while ring.try_write(b"z" * 1000):
            n += 1
        assert n == 4096 // 1016 and ring.written == n
        assert ring.free_bytes() == 4096 - n * 1016
        assert not ring.try_write(b"z" * 1000)
    assert w.dropped == 2 and quiet.dropped == 0
    quiet.count_drop()  # a caller that retried and gave up counts the drop itself
    assert quiet.dropped == 1
    with ringbuf.RingReader.open(w.path) as r:
        assert r.stats().dropped_full == 2 and r.stats().pending == 4
        assert len(r.read_batch(2)) == 2
        assert r.has_uncommitted
        r.commit()
        assert not r.has_uncommitted and r.stats().committed == 2
    assert w.try_write(b"z" * 1000)  # room again
    w.close()
    quiet.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1 MiB tmpfs (needs root to mount; CI runs as root, so CI never skips it)."""
    mnt = tmp_path / "small"
    mnt.mkdir(mode=0o700)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                           str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_ring_larger_than_the_free_shared_memory_is_refused_at_creation(
        small_tmpfs: Path) -> None:
    """The ring's memory is reserved when it is created: a full tmpfs is a clear
    error there, never a SIGBUS in the producer's first write past the free space."""
    with pytest.raises(ringbuf.RingError, match="not enough space"):
        ringbuf.RingWriter.create(small_tmpfs, capacity_bytes=8 << 20)
    assert [p.name for p in small_tmpfs.iterdir()] == []  # no half-made ring left


def test_record_hit_on_a_full_tmpfs_drops_and_counts(small_tmpfs: Path) -> None:
    """A producer whose ring cannot be created keeps running: each record is
    dropped and counted (in a child process: a SIGBUS would kill it)."""
    code = (
        "import sys\n"
        "from collector import Analytics\n"
        "from collector.config import CollectorConfig\n"
        f"a = Analytics(CollectorConfig(rings_dir={str(small_tmpfs)!r},"
        " ring_capacity_bytes=8 << 20))\n"
        "ok = sum(a.record_hit({'i': i, 'pad': 'x' * 400}) for i in range(50_000))\n"
        "s = a.stats()\n"
        "print(ok, s.dropped_no_ring)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    ok, dropped = map(int, done.stdout.split())
    assert (ok, dropped) == (0, 50_000)


def test_new_ring_works_when_the_kernel_cannot_prefault(
        rings_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MADV_POPULATE_WRITE (kernels before 5.14) the pages are touched
    one by one; the ring still starts empty and carries records."""
    monkeypatch.setattr(_files, "_MADV_POPULATE_WRITE", -1)  # madvise: EINVAL
    w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 16, max_record_bytes=1024)
    r = ringbuf.RingReader.open(w.path)
    assert r.read_batch(10) == []
    assert w.try_write(b"a" * 100) and w.try_write(b"b" * 200)
    assert list(r.read_batch(10)) == [b"a" * 100, b"b" * 200]
    r.close()
    w.close()
