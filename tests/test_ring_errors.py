"""Bad input and bad files for a ring: clear errors, never a crash or garbage.

Junk inside a ring (header, frames, payloads) is in ``test_ring_corruption.py``.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ringbuf
from ringbuf import _files

from ._rings import (
    H,
    poke,
    read_all,
    ring_with,
    write_path,  # noqa: F401 (both paths)
)

# -- bad arguments -------------------------------------------------------------

def test_oversize_payload_is_refused_and_counted(rings_dir: Path) -> None:
    for checksum in (False, True):
        w = ring_with(rings_dir, [], max_record_bytes=100, checksum=checksum)
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
        w = ring_with(rings_dir, [], checksum=checksum)
        assert w.try_write(b"abc")  # the fast path has seen this size
        if bad == b"ok":
            assert w.try_write(bytearray(b"def"))  # bytearray is accepted
            w.close()
            continue
        for fn in (w.try_write, w.write_unlocked):
            with pytest.raises(TypeError, match="payload must be bytes"):
                fn(bad)  # type: ignore[arg-type]
        assert w.try_write(b"ghi")  # the ring is still usable
        assert read_all(w.path) == [b"abc", b"ghi"]
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
    w = ring_with(rings_dir, [b"a"])
    with ringbuf.RingReader.open(w.path) as r:
        with pytest.raises(ValueError, match="max_records=0"):
            r.read_batch(0)
        with pytest.raises(ValueError, match="max_bytes=-1"):
            r.read_batch(1, -1)
    w.close()


def test_closed_writer_refuses_writes(rings_dir: Path) -> None:
    w = ring_with(rings_dir, [b"a"])
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
    w = ring_with(rings_dir, [b"a"])
    poke(w.path, 8, struct.pack("<I", ringbuf.LAYOUT_VERSION + 1))
    with pytest.raises(ringbuf.RingVersionMismatch,
                       match=rf"version {ringbuf.LAYOUT_VERSION + 1}.*version "
                             rf"{ringbuf.LAYOUT_VERSION} only"):
        ringbuf.RingReader.open(w.path)
    w.close()


def test_ring_of_another_user_or_writable_by_others(rings_dir: Path) -> None:
    assert os.geteuid() == 0, "the tests run as root (they chown a ring to uid 65534)"
    w = ring_with(rings_dir, [b"a"])
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
    assert read_all(w.path) == [b"a"]
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
    w = ring_with(rings_dir, [])
    assert os.stat(w.path).st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        ringbuf.RingWriter.create(rings_dir, name=os.path.basename(w.path))
    with pytest.raises(ValueError, match="plain file name"):
        ringbuf.RingWriter.create(rings_dir, name="../x.ring")
    w.close()


# -- liveness ------------------------------------------------------------------

def _producer_as_seen_from_another_namespace(path: str) -> None:
    """What a producer in another PID namespace looks like here: pid 1 (our init),
    another start time."""
    poke(path, 48, struct.pack("<Qd", 1, 12345.0))


def test_liveness_is_the_producers_lock_not_its_pid(rings_dir: Path) -> None:
    """A live producer is alive whatever its header's pid says (another PID
    namespace, a reused pid); once its lock is gone and the pid is no hint, dead."""
    w = ring_with(rings_dir, [b"a"])
    _producer_as_seen_from_another_namespace(w.path)
    with ringbuf.RingReader.open(w.path) as r, ringbuf.RingProbe.open(w.path) as p:
        assert r.stats().producer_alive and p.stats().producer_alive
        assert r.stats().producer_pid == 1
        w.abandon()  # unmaps and closes: the lock is released
        assert not r.stats().producer_alive and not p.stats().producer_alive


def test_pid_reuse_is_no_hint(rings_dir: Path) -> None:
    """Lock released, and this pid now belongs to a process with another start time."""
    w = ring_with(rings_dir, [b"a"])
    real = struct.unpack_from("<d", Path(w.path).read_bytes(), 56)[0]
    poke(w.path, 56, struct.pack("<d", real - 3600.0))  # this pid, another start time
    w.abandon()
    with ringbuf.RingProbe.open(w.path) as p:
        s = p.stats()
        assert s.producer_pid == os.getpid()
        assert not s.producer_alive


def test_a_producer_without_its_lock_but_running_here_is_kept(rings_dir: Path) -> None:
    """The pid and start time are a hint only, and only ever keep a ring: a producer in
    this namespace that lost its lock (it closed its descriptors) is still alive."""
    w = ring_with(rings_dir, [b"a"])
    w.abandon()
    with ringbuf.RingProbe.open(w.path) as p:
        assert p.stats().producer_alive


def test_consumer_lock_does_not_conflict_with_the_producers(rings_dir: Path) -> None:
    w = ring_with(rings_dir, [b"a"])
    fd1 = os.open(w.path, os.O_RDWR)
    fd2 = os.open(w.path, os.O_RDWR)
    try:
        assert ringbuf.lock_consumer(fd1)  # the producer holds byte 0, this takes byte 1
        assert not ringbuf.lock_consumer(fd2)  # one consumer only
        assert _files.producer_locked(fd2)  # the producer's lock is untouched
        os.close(fd1)
        fd1 = -1
        assert ringbuf.lock_consumer(fd2)  # released with the consumer's descriptor
    finally:
        for fd in (fd1, fd2):
            if fd >= 0:
                os.close(fd)
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


# -- discover ------------------------------------------------------------------------

def test_discover_lists_rings_with_stats_and_skips_junk(rings_dir: Path) -> None:
    a = ring_with(rings_dir, [b"1", b"2", b"3"], name="a.ring")
    b = ring_with(rings_dir, [], name="b.ring", checksum=True)
    with ringbuf.RingReader.open(a.path) as r:
        r.read_batch(2)
        r.commit()
    b.close()
    (rings_dir / "junk.ring").write_bytes(b"not a ring at all" * 500)
    (rings_dir / "empty.ring").write_bytes(b"")
    (rings_dir / "dir.ring").mkdir()
    (rings_dir / "notes.txt").write_text("hello")
    (rings_dir / ".a.ring.1234.tmp").write_bytes(Path(a.path).read_bytes())
    other = ring_with(rings_dir, [], name="other.ring")
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
