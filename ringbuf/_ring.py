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

Room rule. A frame of ``frame = 16 + align8(len(payload))`` bytes goes at
``off = tail & (capacity - 1)``. If it does not fit before the end of the
data area (``off + frame > capacity``) the producer writes one PAD word at
``off`` and the frame goes to offset 0, so it needs ``frame + capacity -
off`` bytes; else it needs ``frame``. It is written iff ``tail - head +
need <= capacity``, else ``try_write`` returns False (counted in
``dropped_full`` unless ``count_full_drops=False``). The PAD word becomes
visible with the ``tail`` of the frame after it, never alone.

Payloads are ``bytes`` (or ``bytearray``); anything else is a ``TypeError``
and a payload over ``max_record_bytes`` is :class:`RecordTooLarge`
(counted in ``dropped_oversize``). Neither changes the ring.

The producer's hot path (``_make_writers``). ``try_write`` and
``write_unlocked`` are closures over the producer's state in closure
cells (next frame offset, ``tail - offset``, next seq, last ``head`` seen
and ``stop``). Per payload size a ``(Struct("<QQ{n}s").pack_into, frame
size, header word)`` entry is cached, so one ``pack_into`` call copies the
16-byte header and the payload. ``stop`` bounds the frames the fast path
may write with no other check: it is never past the end of the data area
and ``stop - offset`` never exceeds the free space as of the last ``head``
load (free space only grows as the consumer commits and shrinks exactly as
the producer writes). The fast path is therefore: look up the size entry,
one comparison with ``stop``, ``pack_into``, two 8-byte stores (``tail``,
then ``written``). Anything else (a size not seen yet, an oversize or
non-bytes payload, the end of the data area, a possibly full ring, and
``checksum=True``, whose CRC costs more than the checks) goes through
``careful``, the reference implementation, which re-reads ``head`` only
when the cached value says the ring is full and recomputes ``stop``.
With ``thread_safe=True`` the fast path is inlined under an in-process
``threading.Lock`` taken with bound ``acquire``/``release`` (cheaper than
``with lock`` or a nested call); ``write_unlocked`` is the same code
without the lock, for callers that serialise writes themselves. No
lock-free scheme between threads is used: a thread switch can happen
between any two bytecodes, so the lock is what makes the read-modify-
write of the producer state safe. Measured on the 2-core box (Python
3.11, 453-byte record, reader process draining; ``python -m bench
ring``): ~290 ns per unlocked write and ~400 ns with the lock, p50, after
subtracting the timing loop (before: ~530 / ~720 ns).

The consumer's reads (``read_batch``). Positions are checked once per
batch (``head <= tail``, ``tail - head <= capacity``, both 8-aligned).
The published data is then scanned one contiguous segment at a time (up to
the end of the data area or to ``tail``) by a tight loop over absolute file
offsets (``_scan_tagged`` / ``_scan_crc``): per frame one ``unpack_from``,
one combined test (the frame lies inside the segment, ``length <=
max_record_bytes``, ``seq`` is the next expected one, the check word is TAG
or, with checksums, the CRC-32 of the payload) and one ``mmap`` slice to
``bytes``. The first frame a loop does not take is classified outside it:
a PAD word before the end of the data area moves on to the next lap; else
:class:`RingCorrupted`, with the reason, once the valid records before the
bad frame have been handed out (the next call raises again, never skipping
it). A batch never ends just after a PAD word, so a committed ``head``
always ends where a record ends. After a reader restart or a rollback the
first frame's seq must lie in ``[committed, written]``. ~360 ns per
record for ``read_batch(1000)`` + ``commit`` (before: ~1 us).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psutil

from ._errors import (
    NotARing,
    RecordTooLarge,
    RingCorrupted,
    RingError,
    RingPermissionError,
    RingVersionMismatch,
)

MAGIC = b"CLTRING\0"
LAYOUT_VERSION = 1
HEADER_SIZE = 4096
FRAME_HEADER = struct.Struct("<IIQ")  # length, check, seq
FRAME_HEADER_SIZE = FRAME_HEADER.size  # 16
_FRAME_UNPACK = FRAME_HEADER.unpack_from
_WORD = struct.Struct("<Q")
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


_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14+


def _prefault(mm: mmap.mmap, size: int) -> None:
    """Map every page of a new ring writable now, not on the first lap.

    A first write to a page faults (a few µs on a virtual machine): spread
    over the first lap that costs a producer more than its writes. Done once
    at creation (about 3 ms for 8 MiB), in the worker's start-up.
    """
    try:
        mm.madvise(_MADV_POPULATE_WRITE)
        return
    except (OSError, ValueError, AttributeError):
        pass  # an older kernel: touch each page (the data area is all zeros)
    step = mmap.PAGESIZE
    for off in range(HEADER_SIZE, size, step):
        mm[off] = 0


def _allocate(fd: int, size: int, directory: Path) -> None:
    """Reserve the ring's memory now, so a full ``/dev/shm`` fails here.

    A sparse file on tmpfs gets its pages on first write: with the file
    system full, that write would kill the producer with ``SIGBUS``.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return  # a file system without fallocate: pages come on first write
        if exc.errno == errno.ENOSPC:
            raise RingError(
                f"not enough space in {directory} for a ring of {size} bytes "
                f"(ring_capacity_bytes); free space there or make the ring smaller"
            ) from None
        raise


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


_CACHE_LIMIT = 4096  # payload sizes whose frame packer the fast path keeps


def _make_writers(q: memoryview, mv: memoryview, capacity: int, max_record: int,
                  checksum: bool, lock: threading.Lock | None,
                  count_full: bool = True):  # type: ignore[no-untyped-def]
    """Build the producer's write functions as closures over one shared state.

    Returns ``(try_write, write_unlocked, written)``. Every piece of state the
    hot path touches is a closure cell or a constant: attribute and global
    lookups cost more than the copy itself at this size.

    State (closure cells), all absolute byte offsets into the file:

    * ``off``   where the next frame goes (``HEADER_SIZE <= off <= dend``);
    * ``tbase`` so that ``tail == tbase + off`` (grows by ``capacity`` per lap);
    * ``seq``   the next record's sequence number (== records published);
    * ``head``  the consumer's ``head`` as last loaded;
    * ``stop``  the fast path may put a frame ending at or before ``stop``
      without any check: ``stop <= dend`` and ``stop - off`` never exceeds
      the free space as of the last ``head`` load (free space only grows as
      the consumer commits, and shrinks exactly as the producer writes).

    ``careful`` is the reference implementation of a write (type and size
    checks, the room rule, padding, the CRC); the fast path handles only the
    common case (no wrap, room known, payload size already seen) and hands
    everything else to ``careful``.
    """
    base = HEADER_SIZE
    dend = HEADER_SIZE + capacity
    off = base
    tbase = -base
    seq = 0
    head = 0
    stop = base  # forces the first write through ``careful``
    # payload size -> (pack_into of "<QQ{n}s", frame size, header word)
    packers: dict[int, tuple] = {}  # type: ignore[type-arg]
    crc32 = zlib.crc32

    def careful(payload: bytes) -> bool:
        nonlocal off, tbase, seq, head, stop
        if not isinstance(payload, (bytes, bytearray)):
            raise TypeError(
                f"payload must be bytes (or bytearray), got {type(payload).__name__}"
            )
        n = len(payload)
        if n > max_record:
            q[_DROPPED_OVERSIZE] += 1
            raise RecordTooLarge(n, max_record)
        entry = packers.get(n)
        if entry is None:
            if len(packers) >= _CACHE_LIMIT:
                packers.clear()
            entry = packers[n] = (struct.Struct(f"<QQ{n}s").pack_into,
                                  (n + 23) & -8, n | _TAG)
        pack, frame, word = entry
        contig = dend - off  # bytes before the end of the data area
        # The room rule: a frame that does not fit before the end of the data
        # area also consumes the rest of the area (padding).
        need = frame if frame <= contig else frame + contig
        used = tbase + off - head
        if used + need > capacity:
            head = q[_HEAD]  # the consumer's one store; a plain 8-byte load
            used = tbase + off - head
            if used + need > capacity:
                if count_full:
                    q[_DROPPED_FULL] += 1
                return False
        if frame > contig:
            if contig:
                # Mark the rest of the area as padding (contig >= 8: aligned).
                q[off >> 3] = _PAD64
            tbase += capacity
            off = base
        if checksum:
            word = n | (crc32(payload) << 32)
        pack(mv, off, word, seq, payload)
        seq += 1
        off += frame
        free = capacity - (tbase + off - head)
        stop = off + min(free, dend - off)
        # Publish: one aligned 8-byte store makes the frame (and any padding
        # before it) visible; then the record counter.
        q[_TAIL] = tbase + off
        q[_WRITTEN] = seq
        return True

    if checksum:
        # The CRC costs more than the careful path's extra checks: no fast path.
        unlocked = careful
    else:
        def unlocked(payload: bytes) -> bool:
            nonlocal off, seq
            try:
                pack, frame, word = packers[len(payload)]
                end = off + frame
                if end > stop:
                    return careful(payload)
                pack(mv, off, word, seq, payload)
            except KeyError:  # a payload size not seen yet, or an oversize one
                return careful(payload)
            except (TypeError, struct.error):
                raise TypeError(
                    f"payload must be bytes (or bytearray), got {type(payload).__name__}"
                ) from None
            seq += 1
            off = end
            # Publish (see careful): tail, then the record counter.
            q[16] = tbase + end  # _TAIL (constant index: cheaper than a global)
            q[17] = seq  # _WRITTEN
            return True

    if lock is None:
        locked = unlocked
    elif checksum:
        acquire, release = lock.acquire, lock.release

        def locked(payload: bytes) -> bool:
            acquire()
            try:
                return careful(payload)
            finally:
                release()
    else:
        acquire, release = lock.acquire, lock.release

        def locked(payload: bytes) -> bool:
            # The body of ``unlocked``, inlined: a nested call would cost
            # as much as the lock itself.
            nonlocal off, seq
            acquire()
            try:
                pack, frame, word = packers[len(payload)]
                end = off + frame
                if end > stop:
                    return careful(payload)
                pack(mv, off, word, seq, payload)
                seq += 1
                off = end
                q[16] = tbase + end  # _TAIL
                q[17] = seq  # _WRITTEN
                return True
            except KeyError:
                return careful(payload)
            except (TypeError, struct.error):
                raise TypeError(
                    f"payload must be bytes (or bytearray), got {type(payload).__name__}"
                ) from None
            finally:
                release()

    def written() -> int:
        return seq

    return locked, unlocked, written


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
        count_full_drops: bool = True,
    ) -> RingWriter:
        """Create a new ring file (mode 0600, exclusively) in ``directory``.

        ``count_full_drops=False`` stops ``try_write`` from counting a full
        ring in ``dropped_full``: for a caller that retries (a blocking
        policy) and counts the final drop itself with :meth:`count_drop`.
        """
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
            _allocate(fd, HEADER_SIZE + capacity_bytes, directory)
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
        _prefault(self._mm, HEADER_SIZE + capacity_bytes)
        self._mv = memoryview(self._mm)
        self._q = self._mv.cast("Q")
        self._closed = False
        self._pid = pid
        self._lock = threading.Lock() if thread_safe else None
        self.try_write, self.write_unlocked, self._written_fn = _make_writers(
            self._q, self._mv, capacity_bytes, max_record_bytes, checksum,
            self._lock, count_full_drops)
        return self

    def try_write(self, payload: bytes) -> bool:  # replaced per instance in create()
        """Append one record; ``False`` (and counted) when there is no room.

        Never blocks on the consumer. Raises :class:`RecordTooLarge` above
        ``max_record_bytes`` and ``TypeError`` for anything but ``bytes`` or
        ``bytearray``; neither changes the ring.
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
        """Mark the ring closed by its producer (a clean exit). Idempotent.

        With ``thread_safe=True`` it waits for a write in progress in another
        thread; later writes raise ``ValueError``. In a forked child that
        inherited the writer use :meth:`abandon` instead (the lock may have
        been held by a parent's thread at the fork).
        """
        lock = self._lock
        if lock is not None:
            lock.acquire()
        try:
            if self._closed:
                return
            self._closed = True
            self.try_write = self.write_unlocked = _closed_write
            try:
                self._q[_CLOSED] = 1
            finally:
                self._release()
        finally:
            if lock is not None:
                lock.release()

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
    sequence numbers are consecutive. ``nbytes`` is the payload bytes in all.
    """

    __slots__ = ("first_seq", "nbytes")

    def __init__(self, records: Iterable[bytes] = (), first_seq: int = 0,
                 nbytes: int = 0) -> None:
        super().__init__(records)
        self.first_seq = first_seq
        self.nbytes = nbytes


_STOP_DONE = 0  # max_records or max_bytes reached
_STOP_END = 1  # reached the end of the segment
_STOP_ODD = 2  # a frame the fast loop does not take: padding or corruption


def _scan_tagged(mm: mmap.mmap, off: int, seg_end: int, seq: int, count: int, nbytes: int,
                 budget: int, limit: int, nonempty: bool,
                 append) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    """Append up to ``count`` frames in ``[off, seg_end)``; the TAG variant.

    Returns ``(off, seq, nbytes, why)``. Past ``budget`` payload bytes the
    loop stops, unless the batch would otherwise be empty (``nonempty`` says
    whether the caller already holds records). A frame is taken only if it lies
    wholly inside the segment, its length is at most ``limit``, its check
    word is TAG and its sequence number is the expected one; anything else
    stops the loop with ``_STOP_ODD`` for the caller to classify.
    """
    unpack = _FRAME_UNPACK
    start = off
    for _ in range(count):
        try:
            length, check, fseq = unpack(mm, off)
        except struct.error:  # 8 bytes before the end: only padding fits there
            return off, seq, nbytes, _STOP_ODD
        end = off + 16 + ((length + 7) & -8)
        if end > seg_end or length > limit or fseq != seq or check != TAG:
            return off, seq, nbytes, _STOP_ODD
        if nbytes + length > budget and (nonempty or off != start):
            return off, seq, nbytes, _STOP_DONE
        append(mm[off + 16:off + 16 + length])
        nbytes += length
        seq += 1
        off = end
        if end == seg_end:
            return off, seq, nbytes, _STOP_END
    return off, seq, nbytes, _STOP_DONE


def _scan_crc(mm: mmap.mmap, off: int, seg_end: int, seq: int, count: int, nbytes: int,
              budget: int, limit: int, nonempty: bool,
              append) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    """Like :func:`_scan_tagged` for rings whose check word is a CRC-32."""
    unpack = _FRAME_UNPACK
    start = off
    crc32 = zlib.crc32
    for _ in range(count):
        try:
            length, check, fseq = unpack(mm, off)
        except struct.error:
            return off, seq, nbytes, _STOP_ODD
        end = off + 16 + ((length + 7) & -8)
        if end > seg_end or length > limit or fseq != seq:
            return off, seq, nbytes, _STOP_ODD
        payload = mm[off + 16:off + 16 + length]
        if crc32(payload) != check:
            return off, seq, nbytes, _STOP_ODD
        if nbytes + length > budget and (nonempty or off != start):
            return off, seq, nbytes, _STOP_DONE
        append(payload)
        nbytes += length
        seq += 1
        off = end
        if end == seg_end:
            return off, seq, nbytes, _STOP_END
    return off, seq, nbytes, _STOP_DONE


_NO_BUDGET = 1 << 62


class RingReader:
    """The consumer side of one ring. Open with :meth:`RingReader.open`."""

    def __init__(self) -> None:  # pragma: no cover - use open()
        raise TypeError("use RingReader.open(path)")

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, check_owner: bool = True) -> RingReader:
        """Open and validate an existing ring file for reading."""
        path = str(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
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
            if flags & ~FLAG_CHECKSUM:
                raise RingCorrupted(f"ring {path}: unknown flag bits {flags:#x}")
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
        self._scan = _scan_crc if self.checksum else _scan_tagged
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
        if (head > tail or tail - head > self.capacity or head & 7 or tail & 7
                or self._read_pos > tail):
            raise RingCorrupted(
                f"ring {self.path}: impossible positions head={head} tail={tail} "
                f"(read position {self._read_pos}, capacity={self.capacity})"
            )

    # -- reading ----------------------------------------------------------
    def read_batch(self, max_records: int, max_bytes: int | None = None) -> RecordBatch:
        """Read up to ``max_records`` records and at most ``max_bytes`` payload bytes.

        At least one record is returned when one is available, even if it
        alone is larger than ``max_bytes``. The records stay in the ring until
        :meth:`commit`; further calls continue after the last record read.
        Raises :class:`RingCorrupted` on a frame that fails validation (when
        valid records precede it, they are returned first and the next call
        raises).
        """
        if max_records < 1:
            raise ValueError(f"max_records={max_records} must be at least 1")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes} must not be negative")
        tail = self._q[_TAIL]
        pos = self._read_pos
        batch = RecordBatch()
        if tail == pos:
            seq = self._read_seq
            batch.first_seq = seq if seq is not None else self._q[_COMMITTED]
            return batch
        self._check_positions(tail)
        seq = self._read_seq
        if seq is None:
            seq = self._seq_at(pos, tail)
        first_seq = seq
        cap = self.capacity
        mask = cap - 1
        dend = HEADER_SIZE + cap
        mm = self._mm
        scan = self._scan
        budget = _NO_BUDGET if max_bytes is None else max_bytes
        limit = self.max_record_bytes
        append = batch.append
        nbytes = 0
        before_pad = -1  # where padding began, until a record after it is taken
        while pos < tail:
            count = max_records - len(batch)
            if count <= 0:
                break
            rel = pos & mask
            off = HEADER_SIZE + rel
            seg_end = off + min(cap - rel, tail - pos)
            new_off, seq, nbytes, why = scan(mm, off, seg_end, seq, count, nbytes, budget,
                                             limit, bool(batch), append)
            if new_off != off:
                pos += new_off - off
                before_pad = -1
            if why == _STOP_DONE:
                break
            if why == _STOP_END:
                continue  # at the end of the data area (next lap) or at tail
            # A frame the fast loop did not take: padding, or corruption.
            if _WORD.unpack_from(mm, new_off)[0] == _PAD64 and seg_end == dend:
                before_pad = pos
                pos += dend - new_off
                continue
            if batch:
                break  # hand out the good records; the next call raises
            self._diagnose(pos, new_off, seg_end, seq)
        if before_pad >= 0:
            # Stop before the padding: the read position (and so a committed
            # head) always ends where the last record taken ends.
            pos = before_pad
        self._read_pos = pos
        self._read_seq = seq
        batch.first_seq = first_seq
        batch.nbytes = nbytes
        return batch

    def _seq_at(self, pos: int, tail: int) -> int:
        """The sequence number of the frame at ``pos`` (after a restart or rollback).

        It must lie in ``[committed, written]``: a reader that was killed
        between storing ``head`` and ``committed`` leaves ``committed``
        behind, never ahead; ``written`` is stored just after ``tail``.
        """
        mm = self._mm
        dend = HEADER_SIZE + self.capacity
        off = HEADER_SIZE + (pos & (self.capacity - 1))
        if _WORD.unpack_from(mm, off)[0] == _PAD64:
            pos += dend - off
            off = HEADER_SIZE
            if pos + FRAME_HEADER_SIZE > tail:
                self._corrupt(pos, "padding reaches past the published data")
        if off + FRAME_HEADER_SIZE > dend:
            self._corrupt(pos, "frame header runs past the end of the data area")
        fseq = _FRAME_UNPACK(mm, off)[2]
        committed = self._q[_COMMITTED]
        written = self._q[_WRITTEN]
        if not committed <= fseq <= written:
            self._corrupt(pos, f"sequence {fseq} outside [committed={committed}, "
                               f"written={written}]")
        return fseq

    def _diagnose(self, pos: int, off: int, seg_end: int, seq: int) -> None:
        """Raise :class:`RingCorrupted` naming what is wrong with the frame at ``off``."""
        dend = HEADER_SIZE + self.capacity
        word = _WORD.unpack_from(self._mm, off)[0]
        if word == _PAD64:
            self._corrupt(pos, "padding marker where the published data ends before "
                               "the end of the data area")
        if off + FRAME_HEADER_SIZE > dend:
            self._corrupt(pos, "frame header runs past the end of the data area")
        length, check, fseq = _FRAME_UNPACK(self._mm, off)
        limit = self.max_record_bytes
        if length > limit:
            self._corrupt(pos, f"frame length {length} exceeds max_record_bytes {limit}")
        frame = FRAME_HEADER_SIZE + _align8(length)
        if off + frame > seg_end:
            where = "the end of the data area" if seg_end == dend else "the published data"
            self._corrupt(pos, f"frame of {frame} bytes runs past {where}")
        if fseq != seq:
            self._corrupt(pos, f"sequence {fseq} where {seq} was expected")
        if self.checksum:
            start = off + FRAME_HEADER_SIZE
            if zlib.crc32(self._mm[start:start + length]) != check:
                self._corrupt(pos, "CRC-32 of the payload does not match")
        elif check != TAG:
            self._corrupt(pos, f"frame tag {check:#x} is not {TAG:#x}")
        self._corrupt(pos, "frame rejected")  # pragma: no cover - unreachable

    def _corrupt(self, pos: int, why: str) -> NoReturn:
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

    def producer_closed(self) -> bool:
        """True once the producer closed the ring: it writes nothing more."""
        return bool(self._q[_CLOSED])

    def used_bytes(self) -> int:
        """Bytes the producer cannot reuse yet: everything after the committed head."""
        return self._q[_TAIL] - self._head

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
