"""Single-producer/single-consumer ring of byte records in a shared file.

One process (the producer) owns a ring file and appends records with
:meth:`RingWriter.try_write`; one other process (the consumer) reads them
with :meth:`RingReader.read_batch` and frees them with
:meth:`RingReader.commit`. Nothing is locked between the two processes: the
producer alone stores ``tail``, the consumer alone stores ``head``, and
both are monotonically increasing 64-bit byte counters (a position in the
data area is ``counter & (capacity - 1)``).

File layout (little-endian; the data area starts on a page boundary)::

    offset  size  field                 owner     notes
    ------  ----  --------------------  --------  ---------------------------
         0     8  magic                 creator   b"CLTRING\\0"
         8     4  version               creator   LAYOUT_VERSION (1)
        12     4  header_size           creator   HEADER_SIZE (4096)
        16     8  capacity              creator   data area bytes, power of 2
        24     4  max_record_bytes      creator   payload limit
        28     4  flags                 creator   bit 0: frames carry CRC-32
        32    16  ring_id               creator   random; with seq = record id
        48     8  producer_pid          creator
        56     8  producer_start_time   creator   float64, psutil create_time
        64     8  created_at            creator   float64, wall clock
       128     8  tail                  producer  bytes ever published
       136     8  written               producer  records ever published
       144     8  dropped_full          producer  try_write found no room
       152     8  dropped_oversize      producer  RecordTooLarge raised
       160     8  closed                producer  1 after a clean close()
       256     8  head                  consumer  bytes ever committed
       264     8  committed             consumer  records ever committed
      4096     -  data area             producer writes, consumer reads

``tail`` and ``head`` sit on separate 64-byte cache lines (128 and 256) so
the two processes never write the same line.

Frames are 8-byte aligned and never split by the end of the data area::

    +0  u32 length     payload bytes; a PAD frame (all 8 bytes 0xFF) means
                       "skip to the start of the data area"
    +4  u32 check      CRC-32 of the payload when flag bit 0 is set, else
                       the constant TAG 0xC0113C70
    +8  u64 seq        the record's sequence number in this ring (0, 1, ...)
    +16 payload, zero-padded to a multiple of 8

Publishing: the producer copies the frame into the data area, then stores
the new ``tail`` with one aligned 8-byte store (an item assignment on a
``memoryview.cast('Q')`` of the mmap, which CPython performs as a single
``uint64_t`` store). On x86-64 stores are not reordered with older stores
(total store order), so a consumer that sees the new ``tail`` also sees the
frame. On weakly ordered CPUs (ARM, POWER) that guarantee does not hold
without a barrier, which Python cannot issue; there the frame check (length
bounds, the check word, the sequence number and, with ``checksum=True``, the
CRC-32 of the payload) turns a frame read too early into ``RingCorrupted``
rather than garbage, and ``checksum=True`` is recommended. A producer
killed while copying a frame never published it: its bytes lie beyond
``tail`` and are never read.

A consumer that dies before :meth:`RingReader.commit` leaves ``head``
where it was, so the next reader reads the same records again.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import psutil

from ._errors import (
    NotARing,
    RecordTooLarge,
    RingCorrupted,
    RingPermissionError,
    RingVersionMismatch,
)

MAGIC = b"CLTRING\0"
LAYOUT_VERSION = 1
HEADER_SIZE = 4096
FRAME_HEADER = struct.Struct("<IIQ")  # length, check, seq
FRAME_HEADER_SIZE = FRAME_HEADER.size  # 16
PAD = 0xFFFFFFFF
_PAD64 = 0xFFFFFFFFFFFFFFFF
TAG = 0xC0113C70  # check word of a frame when checksums are off
_TAG = TAG << 32
FLAG_CHECKSUM = 1

MIN_CAPACITY = 4096
MAX_CAPACITY = 1 << 40
DEFAULT_MAX_RECORD_BYTES = 64 * 1024
DEFAULT_CAPACITY = 8 * 1024 * 1024
RING_SUFFIX = ".ring"

# The creator's part of the header, written once before the file is visible
# under its final name.
STATIC = struct.Struct("<8sIIQII16sQdd")
assert STATIC.size == 72

# Word indexes into the header viewed as uint64 (offset // 8).
_TAIL = 128 // 8
_WRITTEN = 136 // 8
_DROPPED_FULL = 144 // 8
_DROPPED_OVERSIZE = 152 // 8
_CLOSED = 160 // 8
_HEAD = 256 // 8
_COMMITTED = 264 // 8


def default_directory() -> Path:
    """The default rings directory: private to this user, on tmpfs."""
    return Path("/dev/shm") / f"collector-{os.geteuid()}"


def ensure_private_directory(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` with mode 0700 if missing; refuse an unsafe one."""
    path = Path(directory)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise RingPermissionError(
            f"rings directory {path} is owned by uid {st.st_uid}, not by this "
            f"user (uid {os.geteuid()}): it must be private to the user"
        )
    if st.st_mode & 0o022:
        raise RingPermissionError(
            f"rings directory {path} has mode {stat.S_IMODE(st.st_mode):04o}: "
            "it must not be writable by group or others (use 0700)"
        )
    return path


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def producer_alive(pid: int, start_time: float) -> bool:
    """True if ``pid`` runs and is the process that started at ``start_time``.

    A reused pid belongs to a process with another start time, so it does
    not count as the producer.
    """
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - start_time) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _validate_capacity(capacity_bytes: int, max_record_bytes: int) -> None:
    if not isinstance(capacity_bytes, int) or isinstance(capacity_bytes, bool):
        raise TypeError(f"capacity_bytes must be an int, got {capacity_bytes!r}")
    if capacity_bytes < MIN_CAPACITY or capacity_bytes > MAX_CAPACITY:
        raise ValueError(
            f"capacity_bytes={capacity_bytes} is out of range: it must be a power "
            f"of two between {MIN_CAPACITY} and {MAX_CAPACITY}"
        )
    if capacity_bytes & (capacity_bytes - 1):
        raise ValueError(
            f"capacity_bytes={capacity_bytes} is not a power of two "
            "(the data area must be a power of two, e.g. 1048576)"
        )
    if not isinstance(max_record_bytes, int) or max_record_bytes < 1:
        raise ValueError(f"max_record_bytes={max_record_bytes!r} must be a positive int")
    need = 2 * (FRAME_HEADER_SIZE + _align8(max_record_bytes))
    if capacity_bytes < need:
        raise ValueError(
            f"capacity_bytes={capacity_bytes} is too small for "
            f"max_record_bytes={max_record_bytes}: it must be at least "
            f"2 * (16 + max_record_bytes) = {need}, rounded up to a power of two"
        )


@dataclass(frozen=True, slots=True)
class RingStats:
    """A snapshot of a ring's header, as :meth:`RingReader.stats` reads it."""

    path: str
    ring_id: str
    written: int
    dropped_full: int
    dropped_oversize: int
    committed: int
    bytes_used: int
    capacity: int
    max_record_bytes: int
    producer_pid: int
    producer_start_time: float
    producer_alive: bool
    closed: bool
    created_at: float

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_oversize

    @property
    def fill_ratio(self) -> float:
        return self.bytes_used / self.capacity if self.capacity else 0.0

    @property
    def pending(self) -> int:
        return self.written - self.committed


class _FramePackers(dict):
    """Caches one ``struct.Struct("<QQ{n}s").pack_into`` per payload size.

    Writing the frame header and the payload with one ``pack_into`` call is
    the cheapest way CPython offers to copy both into the mmap.
    """

    def __missing__(self, n: int):  # type: ignore[no-untyped-def]
        if len(self) > 4096:
            self.clear()
        packer = struct.Struct(f"<QQ{n}s").pack_into
        self[n] = packer
        return packer


def _make_write(writer: RingWriter, q: memoryview, mv: memoryview, capacity: int,
                max_record: int, checksum: bool):  # type: ignore[no-untyped-def]
    """Build the producer's write function as a closure.

    Every piece of state the hot path touches is a closure cell or a local:
    attribute lookups cost more than the copy itself at this size.
    """
    tail = 0
    pos = 0  # tail & (capacity - 1), kept to save the mask
    seq = 0
    head = 0  # last head seen; reloaded from shared memory only when full
    packers = _FramePackers()
    base = HEADER_SIZE
    crc32 = zlib.crc32

    def write(payload: bytes) -> bool:
        nonlocal tail, pos, seq, head
        n = len(payload)
        if n > max_record:
            q[_DROPPED_OVERSIZE] += 1
            raise RecordTooLarge(n, max_record)
        frame = (n + 23) & -8  # 16-byte header + payload rounded up to 8
        end = pos + frame
        need = frame if end <= capacity else frame + capacity - pos
        if tail + need - head > capacity:
            head = q[_HEAD]  # the consumer's one store; a plain 8-byte load
            if tail + need - head > capacity:
                q[_DROPPED_FULL] += 1
                return False
        if end > capacity:
            # Not enough room before the end: mark the rest as padding.
            q[(base + pos) >> 3] = _PAD64
            tail += capacity - pos
            pos = 0
            end = frame
        check = (crc32(payload) << 32) if checksum else _TAG
        try:
            packers[n](mv, base + pos, n | check, seq, payload)
        except struct.error:
            raise TypeError(
                f"payload must be bytes, got {type(payload).__name__}"
            ) from None
        seq += 1
        tail += frame
        pos = end if end < capacity else 0
        # Publish: one aligned 8-byte store makes the frame visible.
        q[_TAIL] = tail
        q[_WRITTEN] = seq
        return True

    def written() -> int:
        return seq

    writer._written_fn = written
    return write


def _closed_write(payload: bytes) -> bool:
    raise ValueError("this ring writer is closed")


class RingWriter:
    """The producer side of one ring. Create with :meth:`RingWriter.create`.

    ``try_write`` is safe to call from several threads of the owning process
    (an in-process lock serialises them); ``thread_safe=False`` drops the
    lock for callers that hold their own (``write_unlocked`` is always the
    lock-free version).
    """

    path: str
    ring_id: str
    capacity: int
    max_record_bytes: int
    checksum: bool

    def __init__(self) -> None:  # pragma: no cover - use create()
        raise TypeError("use RingWriter.create(directory, capacity_bytes=...)")

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str] | None = None,
        *,
        capacity_bytes: int = DEFAULT_CAPACITY,
        name: str | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        checksum: bool = False,
        thread_safe: bool = True,
    ) -> RingWriter:
        """Create a new ring file (mode 0600, exclusively) in ``directory``."""
        _validate_capacity(capacity_bytes, max_record_bytes)
        directory = ensure_private_directory(directory or default_directory())
        ring_id = uuid.uuid4()
        pid = os.getpid()
        if name is None:
            name = f"{pid}-{ring_id.hex[:16]}{RING_SUFFIX}"
        elif "/" in name or name in ("", ".", ".."):
            raise ValueError(f"ring name {name!r} must be a plain file name")
        path = directory / name
        start = _process_start_time(pid) or 0.0
        flags = FLAG_CHECKSUM if checksum else 0
        # Build the file under a hidden name, then link it into place so a
        # reader never sees a ring without its header.
        tmp = directory / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, HEADER_SIZE + capacity_bytes)
            os.pwrite(
                fd,
                STATIC.pack(MAGIC, LAYOUT_VERSION, HEADER_SIZE, capacity_bytes,
                            max_record_bytes, flags, ring_id.bytes, pid, start,
                            time.time()),
                0,
            )
            os.link(tmp, path)  # fails if path exists: exclusive creation
        except BaseException:
            os.close(fd)
            raise
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self = object.__new__(cls)
        self.path = str(path)
        self.ring_id = ring_id.hex
        self.capacity = capacity_bytes
        self.max_record_bytes = max_record_bytes
        self.checksum = checksum
        self._fd = fd
        self._mm = mmap.mmap(fd, HEADER_SIZE + capacity_bytes)
        self._mv = memoryview(self._mm)
        self._q = self._mv.cast("Q")
        self._closed = False
        self._pid = pid
        write = _make_write(self, self._q, self._mv, capacity_bytes,
                            max_record_bytes, checksum)
        self.write_unlocked = write
        if thread_safe:
            lock = threading.Lock()

            def locked_write(payload: bytes) -> bool:
                with lock:
                    return write(payload)

            self.try_write = locked_write
        else:
            self.try_write = write
        return self

    def try_write(self, payload: bytes) -> bool:  # replaced per instance in create()
        """Append one record; ``False`` (and counted) when there is no room.

        Never blocks on the consumer. Raises :class:`RecordTooLarge` above
        ``max_record_bytes`` and ``TypeError`` for anything but bytes.
        """
        raise NotImplementedError  # pragma: no cover

    # -- lifecycle --------------------------------------------------------
    @property
    def owner_pid(self) -> int:
        return self._pid

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def written(self) -> int:
        return self._written_fn()

    @property
    def dropped(self) -> int:
        return self._q[_DROPPED_FULL] + self._q[_DROPPED_OVERSIZE]

    def free_bytes(self) -> int:
        return self.capacity - (self._q[_TAIL] - self._q[_HEAD])

    def count_drop(self) -> None:
        """Count a record the caller dropped for want of room (e.g. after a block timeout)."""
        self._q[_DROPPED_FULL] += 1

    def close(self) -> None:
        """Mark the ring closed by its producer (a clean exit). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.try_write = self.write_unlocked = _closed_write
        try:
            self._q[_CLOSED] = 1
        finally:
            self._release()

    def abandon(self) -> None:
        """Unmap without marking closed (for a forked child that inherited it)."""
        if self._closed:
            return
        self._closed = True
        self.try_write = self.write_unlocked = _closed_write
        self._release()

    def _release(self) -> None:
        try:
            self._q.release()
            self._mv.release()
            self._mm.close()
        except (BufferError, ValueError):
            pass
        try:
            os.close(self._fd)
        except OSError:
            pass

    def __enter__(self) -> RingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RingWriter(path={self.path!r}, capacity={self.capacity})"


class RecordBatch(list):
    """A list of record payloads (bytes) that also knows its sequence numbers.

    ``first_seq`` is the sequence number of the first record; the records'
    sequence numbers are consecutive.
    """

    __slots__ = ("first_seq", "nbytes")

    def __init__(self, records: list[bytes], first_seq: int, nbytes: int) -> None:
        super().__init__(records)
        self.first_seq = first_seq
        self.nbytes = nbytes


class RingReader:
    """The consumer side of one ring. Open with :meth:`RingReader.open`."""

    def __init__(self) -> None:  # pragma: no cover - use open()
        raise TypeError("use RingReader.open(path)")

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, check_owner: bool = True) -> RingReader:
        """Open and validate an existing ring file for reading."""
        path = str(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except IsADirectoryError:
            raise NotARing(f"{path} is a directory, not a ring file") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotARing(f"{path} is not a regular file, so not a ring")
            if check_owner:
                if st.st_uid != os.geteuid():
                    raise RingPermissionError(
                        f"ring {path} is owned by uid {st.st_uid}, not by this user "
                        f"(uid {os.geteuid()}): rings must be private to their user"
                    )
                if st.st_mode & 0o022:
                    raise RingPermissionError(
                        f"ring {path} has mode {stat.S_IMODE(st.st_mode):04o}: a ring "
                        "must not be writable by group or others (expected 0600)"
                    )
            if st.st_size < HEADER_SIZE:
                raise NotARing(
                    f"{path} is {st.st_size} bytes, shorter than a ring header "
                    f"({HEADER_SIZE} bytes): not a ring"
                )
            raw = os.pread(fd, STATIC.size, 0)
            (magic, version, header_size, capacity, max_record, flags, rid, pid,
             start, created) = STATIC.unpack(raw)
            if magic != MAGIC:
                raise NotARing(f"{path} does not start with the ring magic {MAGIC!r}: not a ring")
            if version != LAYOUT_VERSION:
                raise RingVersionMismatch(
                    f"ring {path} has layout version {version}; this code reads "
                    f"version {LAYOUT_VERSION} only"
                )
            if header_size != HEADER_SIZE:
                raise RingCorrupted(f"ring {path}: header_size {header_size} != {HEADER_SIZE}")
            if (capacity < MIN_CAPACITY or capacity > MAX_CAPACITY
                    or capacity & (capacity - 1)):
                raise RingCorrupted(f"ring {path}: capacity {capacity} is not a valid power of two")
            if st.st_size != HEADER_SIZE + capacity:
                raise RingCorrupted(
                    f"ring {path}: file size {st.st_size} != header + capacity "
                    f"({HEADER_SIZE + capacity})"
                )
            if not 0 < max_record < PAD or 2 * (FRAME_HEADER_SIZE + _align8(max_record)) > capacity:
                raise RingCorrupted(f"ring {path}: max_record_bytes {max_record} is impossible")
            mm = mmap.mmap(fd, HEADER_SIZE + capacity)
        except BaseException:
            os.close(fd)
            raise
        self = object.__new__(cls)
        self.path = path
        self.ring_id = uuid.UUID(bytes=rid).hex
        self.capacity = capacity
        self.max_record_bytes = max_record
        self.checksum = bool(flags & FLAG_CHECKSUM)
        self.producer_pid = pid
        self.producer_start_time = start
        self.created_at = created
        self._fd = fd
        self._mm = mm
        self._mv = memoryview(mm)
        self._q = self._mv[:HEADER_SIZE].cast("Q")
        self._mask = capacity - 1
        self._head = self._q[_HEAD]
        self._read_pos = self._head
        self._head_seq: int | None = None  # seq of the record at head, once known
        self._read_seq: int | None = None
        self._check_positions(self._q[_TAIL])
        return self

    def _check_positions(self, tail: int) -> None:
        head = self._head
        if head > tail or tail - head > self.capacity or head & 7 or tail & 7:
            raise RingCorrupted(
                f"ring {self.path}: impossible positions head={head} tail={tail} "
                f"capacity={self.capacity}"
            )

    # -- reading ----------------------------------------------------------
    def read_batch(self, max_records: int, max_bytes: int | None = None) -> RecordBatch:
        """Read up to ``max_records`` records (and about ``max_bytes`` payload bytes).

        The records stay in the ring until :meth:`commit`; further calls
        continue after the last record read. Raises :class:`RingCorrupted`
        on a frame that fails validation.
        """
        if max_records < 1:
            raise ValueError(f"max_records={max_records} must be at least 1")
        q = self._q
        tail = q[_TAIL]
        self._check_positions(tail)
        mv = self._mv
        mask = self._mask
        cap = self.capacity
        pos = self._read_pos
        seq = self._read_seq
        records: list[bytes] = []
        nbytes = 0
        first_seq = seq
        limit = self.max_record_bytes
        unpack = FRAME_HEADER.unpack_from
        while pos < tail and len(records) < max_records:
            off = pos & mask
            length, check, fseq = unpack(mv, HEADER_SIZE + off)
            if length == PAD:
                if check != PAD:
                    self._corrupt(pos, "padding marker with a bad check word")
                pos += cap - off
                continue
            if length > limit:
                self._corrupt(pos, f"frame length {length} exceeds max_record_bytes {limit}")
            frame = FRAME_HEADER_SIZE + ((length + 7) & ~7)
            if off + frame > cap or pos + frame > tail:
                self._corrupt(pos, f"frame of {frame} bytes runs past the end of the data")
            if seq is None:
                committed = q[_COMMITTED]
                if fseq < committed or fseq > q[_WRITTEN]:
                    self._corrupt(pos, f"sequence {fseq} outside [{committed}, written]")
                seq = first_seq = fseq
            elif fseq != seq:
                self._corrupt(pos, f"sequence {fseq} where {seq} was expected")
            start = HEADER_SIZE + off + FRAME_HEADER_SIZE
            payload = bytes(mv[start:start + length])
            if self.checksum:
                if zlib.crc32(payload) != check:
                    self._corrupt(pos, "CRC-32 of the payload does not match")
            elif check != TAG:
                self._corrupt(pos, f"frame tag {check:#x} is not {TAG:#x}")
            if max_bytes is not None and records and nbytes + length > max_bytes:
                break
            records.append(payload)
            nbytes += length
            seq += 1
            pos += frame
        self._read_pos = pos
        self._read_seq = seq
        return RecordBatch(records, first_seq if first_seq is not None else (seq or 0), nbytes)

    def _corrupt(self, pos: int, why: str) -> None:
        raise RingCorrupted(f"ring {self.path}: corrupted frame at position {pos}: {why}")

    def commit(self) -> None:
        """Free every record read so far; they will not be read again."""
        pos = self._read_pos
        if pos == self._head:
            return
        # One aligned 8-byte store publishes the new head to the producer.
        self._q[_HEAD] = pos
        self._head = pos
        self._head_seq = self._read_seq
        if self._read_seq is not None:
            self._q[_COMMITTED] = self._read_seq

    def rollback(self) -> None:
        """Forget what was read since the last commit; it will be read again."""
        self._read_pos = self._head
        self._read_seq = self._head_seq

    @property
    def has_uncommitted(self) -> bool:
        return self._read_pos != self._head

    def available_bytes(self) -> int:
        return self._q[_TAIL] - self._read_pos

    def is_empty(self) -> bool:
        return self._q[_TAIL] == self._head

    # -- stats and lifecycle ----------------------------------------------
    def stats(self) -> RingStats:
        return read_stats(self._q, self.path, self.ring_id, self.capacity,
                          self.max_record_bytes, self.producer_pid,
                          self.producer_start_time, self.created_at)

    def close(self) -> None:
        """Unmap the ring. Uncommitted records stay for the next reader."""
        if self._fd < 0:
            return
        try:
            self._q.release()
            self._mv.release()
            self._mm.close()
        except (BufferError, ValueError):
            pass
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RingReader(path={self.path!r}, capacity={self.capacity})"


def read_stats(q: memoryview, path: str, ring_id: str, capacity: int, max_record: int,
               pid: int, start: float, created: float) -> RingStats:
    head = q[_HEAD]
    tail = q[_TAIL]
    return RingStats(
        path=path,
        ring_id=ring_id,
        written=q[_WRITTEN],
        dropped_full=q[_DROPPED_FULL],
        dropped_oversize=q[_DROPPED_OVERSIZE],
        committed=q[_COMMITTED],
        bytes_used=max(0, tail - head),
        capacity=capacity,
        max_record_bytes=max_record,
        producer_pid=pid,
        producer_start_time=start,
        producer_alive=producer_alive(pid, start),
        closed=bool(q[_CLOSED]),
        created_at=created,
    )


def discover(directory: str | os.PathLike[str] | None = None) -> list[RingStats]:
    """The rings in ``directory`` (default: this user's) with their stats.

    Files that are not valid rings are skipped here; open them with
    :meth:`RingReader.open` to learn why.
    """
    directory = Path(directory or default_directory())
    out: list[RingStats] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(RING_SUFFIX) or name.startswith("."):
            continue
        try:
            with RingReader.open(directory / name) as r:
                out.append(r.stats())
        except (OSError, NotARing, RingCorrupted):
            continue
    return out
