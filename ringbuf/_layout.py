"""The ring file's binary layout: the contract between producer and consumer.

Everything that must be the same on both sides of the shared file is here:
offsets, ``struct.Struct`` formats, magic and version, the frame format, the
room rule and the capacity rule (:func:`check_capacity`). The writer
(:mod:`ringbuf._writer`) and the reader (:mod:`ringbuf._reader`) only follow
it; a producer in another language (a native fast path) must follow it too.

File layout (little-endian; the data area starts on a page boundary)::

    offset  size  field                 owner     notes
    ------  ----  --------------------  --------  ---------------------------
         0     8  magic                 creator   MAGIC, b"CLTRING\\0"
         8     4  version               creator   LAYOUT_VERSION (1)
        12     4  header_size           creator   HEADER_SIZE (4096)
        16     8  capacity              creator   data area bytes, power of 2
        24     4  max_record_bytes      creator   payload limit
        28     4  flags                 creator   bit 0 (FLAG_CHECKSUM): CRC-32
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

The creator's fields (``STATIC``, offsets 0-71) are written once, before the
file appears under its final name, and never change. The words from offset
128 on are read and written as the header viewed as ``uint64`` (a
``memoryview.cast('Q')``); their indexes are the ``W_*`` constants
(offset // 8). ``tail`` and ``head`` sit on separate 64-byte cache lines
(128 and 256) so the two processes never write the same line. ``tail`` and
``head`` are monotonically increasing byte counters; a position in the data
area is ``counter & (capacity - 1)``.

Frames (``FRAME_HEADER``) are 8-byte aligned and never split by the end of
the data area::

    +0  u32 length     payload bytes; a PAD frame (all 8 bytes 0xFF) means
                       "skip to the start of the data area"
    +4  u32 check      CRC-32 of the payload when FLAG_CHECKSUM is set, else
                       the constant TAG 0xC0113C70
    +8  u64 seq        the record's sequence number in this ring (0, 1, ...)
    +16 payload, zero-padded to a multiple of 8

Why each publishing store is atomic. The producer alone stores ``tail``,
``written``, the drop counters and ``closed``; the consumer alone stores
``head`` and ``committed``. Each is one aligned 8-byte word, stored by an
item assignment on the ``memoryview.cast('Q')`` of the mmap, which CPython
performs as a single ``uint64_t`` store: a reader in the other process sees
the old or the new value, never a mix. Nothing else is shared, so no lock is
needed between the processes.

Memory ordering. The producer copies a frame into the data area, then
stores the new ``tail``; the consumer loads ``tail``, then reads the frames
before it. What holds where:

* x86-64 (total store order): stores are not reordered with older stores
  and loads not with older loads, so a consumer that sees the new ``tail``
  also sees the frame, on either path.
* Weakly ordered CPUs (ARM64, POWER), pure Python: neither side can issue a
  barrier, so the new ``tail`` may be seen before the frame's bytes. The
  reader then *settles* (:mod:`ringbuf._reader`): a frame that fails its
  check is read again for ``SETTLE_S`` before it is called corrupt, so a
  frame seen early is read once it arrives and a healthy ring is never
  quarantined. The check sees the header (length, tag, seq) and, with
  ``checksum=True``, the payload's CRC-32; without it a payload whose
  header arrived first could be taken stale, so there use
  ``checksum=True`` or the native path.
* Either CPU, native path: the writer stores ``tail`` with a release store
  after the frame, the reader loads it with an acquire load, so the frame
  is visible whenever ``tail`` is, by the C11 memory model.

The other direction needs no barrier: the producer reuses space only after
a load of ``head`` that its stores depend on (a control dependency, which
every CPU respects for a later store), and the consumer stores ``head``
only after it copied the records out and handed them on (a batch's
delivery, system calls included, lies between).
A producer killed while copying a frame never published it:
its bytes lie beyond ``tail`` and are never read. A consumer that dies
before it stores ``head`` leaves the records for the next reader.

Locks: who is alive. Two byte-range OFD locks (``fcntl`` ``F_OFD_SETLK``,
write locks of one byte each, never the data) say who uses the file::

    byte 0  PRODUCER_LOCK  taken by the producer on the new file before it
                           appears under its final name, held for the
                           producer's life; the kernel drops it when the
                           process dies (``kill -9`` included)
    byte 1  CONSUMER_LOCK  taken by the one consumer serving the ring

An OFD lock belongs to the open file description, not to a pid, so it
holds across PID namespaces (a producer in a sidecar container sharing
only the rings directory's tmpfs) and cannot be confused by a reused pid:
"producer gone" is read from byte 0 with ``F_OFD_GETLK``, and the header's
``producer_pid`` / ``producer_start_time`` are only a hint, meaningful in
the producer's own PID namespace. A forked child inherits the descriptor
(and so the lock) and must close it (the client's at-fork hook abandons
the inherited writer), or the parent's ring would look alive for as long
as the child runs. The two locks are on different bytes, so the
consumer's never conflicts with the producer's.

Room rule. A frame of ``frame_size(len(payload))`` bytes goes at ``off =
tail & (capacity - 1)``. If it does not fit before the end of the data area
(``off + frame > capacity``) the producer writes one PAD word at ``off`` and
the frame goes to offset 0, so it needs ``frame + capacity - off`` bytes;
else it needs ``frame``. It is written iff ``tail - head + need <=
capacity``. The PAD word becomes visible with the ``tail`` of the frame
after it, never alone.

Capacity rule (:func:`check_capacity`). The data area is a power of two
between ``MIN_CAPACITY`` and ``MAX_CAPACITY``, and holds at least two frames
of ``max_record_bytes``: a record of the largest size then always fits once
the ring is empty, wherever ``tail`` stands (at worst it pads to the end of
the area first).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from ._errors import NotARing, RingCorrupted, RingVersionMismatch

MAGIC = b"CLTRING\0"
LAYOUT_VERSION = 1
HEADER_SIZE = 4096
RING_SUFFIX = ".ring"

# The creator's part of the header: magic, version, header_size, capacity,
# max_record_bytes, flags, ring_id, producer_pid, producer_start_time, created_at.
STATIC = struct.Struct("<8sIIQII16sQdd")
assert STATIC.size == 72

FLAG_CHECKSUM = 1

# The liveness locks (byte offsets of one-byte OFD write locks, see the module doc).
PRODUCER_LOCK = 0
CONSUMER_LOCK = 1

# Word indexes into the header viewed as uint64 (offset // 8).
W_TAIL = 128 // 8
W_WRITTEN = 136 // 8
W_DROPPED_FULL = 144 // 8
W_DROPPED_OVERSIZE = 152 // 8
W_CLOSED = 160 // 8
W_HEAD = 256 // 8
W_COMMITTED = 264 // 8

FRAME_HEADER = struct.Struct("<IIQ")  # length, check, seq
FRAME_HEADER_SIZE = FRAME_HEADER.size  # 16
WORD = struct.Struct("<Q")
PAD = 0xFFFFFFFF  # a frame length that cannot be a record's
PAD64 = 0xFFFFFFFFFFFFFFFF  # the whole PAD word, as the reader sees it
TAG = 0xC0113C70  # check word of a frame when checksums are off

MIN_CAPACITY = 4096
MAX_CAPACITY = 1 << 40
MAX_RECORD_BYTES = PAD - 1  # a frame's length is a u32 and PAD is not a length
DEFAULT_MAX_RECORD_BYTES = 64 * 1024
DEFAULT_CAPACITY = 8 * 1024 * 1024


def align8(n: int) -> int:
    return (n + 7) & ~7


def frame_size(payload_bytes: int) -> int:
    """Bytes a frame of ``payload_bytes`` takes in the data area."""
    return FRAME_HEADER_SIZE + align8(payload_bytes)


def check_capacity(capacity_bytes: int, max_record_bytes: int | None = None) -> None:
    """Raise unless a ring of ``capacity_bytes`` may hold records of ``max_record_bytes``.

    The capacity rule of the module doc: ``ValueError`` (``TypeError`` for a
    capacity that is not an int) naming the value and the rule. Without
    ``max_record_bytes`` only the capacity itself is checked.
    """
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
    if max_record_bytes is None:
        return
    if (not isinstance(max_record_bytes, int) or isinstance(max_record_bytes, bool)
            or not 1 <= max_record_bytes <= MAX_RECORD_BYTES):
        raise ValueError(f"max_record_bytes={max_record_bytes!r} must be a positive int "
                         f"of at most {MAX_RECORD_BYTES}")
    need = 2 * frame_size(max_record_bytes)
    if capacity_bytes < need:
        raise ValueError(
            f"capacity_bytes={capacity_bytes} is too small for "
            f"max_record_bytes={max_record_bytes}: it must be at least "
            f"2 * (16 + max_record_bytes) = {need}, rounded up to a power of two"
        )


@dataclass(frozen=True, slots=True)
class Header:
    """The creator's part of a ring's header (``STATIC``), validated."""

    ring_id: str  # hex
    capacity: int
    max_record_bytes: int
    checksum: bool
    producer_pid: int
    producer_start_time: float
    created_at: float

    def pack(self) -> bytes:
        flags = FLAG_CHECKSUM if self.checksum else 0
        return STATIC.pack(MAGIC, LAYOUT_VERSION, HEADER_SIZE, self.capacity,
                           self.max_record_bytes, flags, uuid.UUID(hex=self.ring_id).bytes,
                           self.producer_pid, self.producer_start_time, self.created_at)


def parse_header(raw: bytes, path: str, file_size: int) -> Header:
    """Validate the first ``STATIC.size`` bytes of a ring file of ``file_size`` bytes.

    Raises :class:`NotARing` (wrong magic), :class:`RingVersionMismatch` or
    :class:`RingCorrupted` naming the field that cannot be right.
    """
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
    try:
        check_capacity(capacity)
    except ValueError:
        raise RingCorrupted(
            f"ring {path}: capacity {capacity} is not a valid power of two") from None
    if file_size != HEADER_SIZE + capacity:
        raise RingCorrupted(
            f"ring {path}: file size {file_size} != header + capacity "
            f"({HEADER_SIZE + capacity})"
        )
    if flags & ~FLAG_CHECKSUM:
        raise RingCorrupted(f"ring {path}: unknown flag bits {flags:#x}")
    try:
        check_capacity(capacity, max_record)
    except ValueError as exc:
        raise RingCorrupted(
            f"ring {path}: max_record_bytes {max_record} is impossible ({exc})") from None
    return Header(uuid.UUID(bytes=rid).hex, capacity, max_record, bool(flags & FLAG_CHECKSUM),
                  pid, start, created)


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
