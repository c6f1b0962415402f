"""The consumer side: :class:`RingReader`, :class:`RecordBatch` and the frame scanners.

A reader opens a ring file only after :func:`ringbuf._files.open_ring_file`
validated it, then maps it. Positions are checked once per batch (``head <=
tail``, ``tail - head <= capacity``, both 8-aligned). The published data is
then scanned one contiguous segment at a time (up to the end of the data
area or to ``tail``) by a tight loop over absolute file offsets
(:mod:`ringbuf._scan`: per frame one ``unpack_from``, one combined test
and one ``mmap`` slice to ``bytes``). The first frame a loop does not take
is classified outside it: a PAD word before the end of the data area moves
on to the next lap; else the frame is bad, and the valid records before it
are handed out first. A batch never ends just after a PAD word, so a
committed ``head`` always ends where a record ends. After a reader restart
or a rollback the first frame's seq must lie in ``[committed, written]``.

Settling. A bad frame is not called corrupt at once: on a weakly ordered
CPU (ARM, POWER) without the native path's release/acquire pair, the new
``tail`` can be seen before the frame's bytes (:mod:`ringbuf._layout`,
memory ordering). So the first look that finds the frame at position ``p``
bad starts a clock: for ``settle_s`` (``SETTLE_S``, 50 ms, many orders of
magnitude above how long a store can stay invisible) ``read_batch``
returns what came before it (possibly nothing) and reads the frame again
on every later call; a frame that turns valid is read normally. A look at
or after ``settle_s`` that still finds it bad raises
:class:`RingCorrupted` with the reason, and so does every later call (never
skipping it): only damage that persists gets a ring quarantined.
``unsettled_looks`` counts the calls that found a frame still in flight.
On the native path (:mod:`ringbuf._native`) ``read_batch`` loads ``tail``
with an acquire load, the pair of the writer's release store.

:meth:`RingReader.commit` publishes ``head`` (then ``committed``) with one
aligned 8-byte store each (:mod:`ringbuf._layout`); a reader that dies
before it leaves the records for the next reader. ``python -m bench ring``
prints what reading costs.
"""

from __future__ import annotations

import functools
import mmap
import os
import time
import zlib
from collections.abc import Callable, Iterable
from typing import NoReturn

from . import _native
from ._errors import RingCorrupted
from ._files import open_ring_file, ring_file_problem, unmap
from ._layout import (
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    HEADER_SIZE,
    PAD64,
    TAG,
    W_CLOSED,
    W_COMMITTED,
    W_HEAD,
    W_TAIL,
    W_WRITTEN,
    WORD,
    RingStats,
    align8,
)
from ._probe import read_stats
from ._scan import _STOP_DONE, _STOP_END, _scan_crc, _scan_tagged, pack_bins, scan_packed

_FRAME_UNPACK = FRAME_HEADER.unpack_from
_WORD_UNPACK = WORD.unpack_from


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


class PackedBatch:
    """What :meth:`RingReader.read_packed` read: ``n`` records from ``first_seq`` on,
    ``nbytes`` payload bytes, as ``parts``: bytes objects (one per contiguous
    segment read) that hold each record as a msgpack bin, in order. A msgpack
    array header of ``n`` followed by the parts is the msgpack array of the
    records' payloads (``collector.common.stream.encode_packed_entry``)."""

    __slots__ = ("first_seq", "n", "nbytes", "parts")

    def __init__(self) -> None:
        self.first_seq = 0
        self.n = 0
        self.nbytes = 0
        self.parts: list[bytes] = []

    def __len__(self) -> int:
        return self.n


Scanner = Callable[..., tuple[int, int, int, int]]

_NO_BUDGET = 1 << 62
SETTLE_S = 0.05  # how long a frame failing its check at the frontier may still be in flight


class RingReader:
    """The consumer side of one ring. Open with :meth:`RingReader.open`."""

    def __init__(self) -> None:  # pragma: no cover - use open()
        raise TypeError("use RingReader.open(path)")

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, check_owner: bool = True,
             settle_s: float = SETTLE_S) -> RingReader:
        """Open and validate an existing ring file for reading.

        A frame that fails its check is treated as not yet visible for
        ``settle_s`` seconds from the first look that saw it fail (module doc:
        settling); ``settle_s=0`` calls it corrupt at once.
        """
        if settle_s < 0:
            raise ValueError(f"settle_s={settle_s} must not be negative")
        path = str(path)
        fd, header = open_ring_file(path, check_owner=check_owner)
        try:
            mm = mmap.mmap(fd, HEADER_SIZE + header.capacity)
        except BaseException:
            os.close(fd)
            raise
        self = object.__new__(cls)
        self.path = path
        self.header = header
        self.ring_id = header.ring_id
        self.capacity = header.capacity
        self.max_record_bytes = header.max_record_bytes
        self.checksum = header.checksum
        self._scan = _scan_crc if self.checksum else _scan_tagged
        # read_packed's native scanner (TAG rings on the native path), else pack_bin
        self._scan_packed = (scan_packed if scan_packed is not None and not self.checksum
                             and not _native.forced_pure() else None)
        self.producer_pid = header.producer_pid
        self.producer_start_time = header.producer_start_time
        self.created_at = header.created_at
        self._fd = fd
        self._mm = mm
        self._mv = memoryview(mm)
        self._q = self._mv[:HEADER_SIZE].cast("Q")
        # tail gates the frames: an acquire load on the native path (module doc)
        if _native.active_path() == "native":
            self._load_tail = functools.partial(_native.load_acquire, mm, W_TAIL * 8)
        else:
            self._load_tail = functools.partial(self._q.__getitem__, W_TAIL)
        self._mask = header.capacity - 1
        self._head = self._q[W_HEAD]
        self._read_pos = self._head
        self._head_seq: int | None = None  # seq of the record at head, once known
        self._read_seq: int | None = None
        self._settle_s = settle_s
        self._unsettled: tuple[int, float] | None = None  # (position, give-up time)
        self.unsettled_looks = 0  # read_batch calls that found a frame still in flight
        self._check_positions(self._q[W_TAIL])
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
        Raises :class:`RingCorrupted` on a frame that fails validation for
        ``settle_s`` (module doc: settling; when valid records precede it,
        they are returned first and a later call raises).
        """
        batch = RecordBatch()
        self._read(max_records, max_bytes, batch, self._scan, batch.append)
        return batch

    def read_packed(self, max_records: int, max_bytes: int | None = None) -> PackedBatch:
        """:meth:`read_batch`'s records (the same rules, the same positions), handed on
        as msgpack bins in one bytes object per contiguous segment (:class:`PackedBatch`):
        what the flusher puts into a stream entry as it is."""
        batch = PackedBatch()
        if self._scan_packed is not None:
            self._read(max_records, max_bytes, batch, self._scan_packed, batch.parts.append)
        else:
            records: list[bytes] = []
            self._read(max_records, max_bytes, batch, self._scan, records.append)
            if records:
                batch.parts.append(pack_bins(records))
        return batch

    def _read(self, max_records: int, max_bytes: int | None, batch: RecordBatch | PackedBatch,
              scan: Scanner, append: Callable[[bytes], object]) -> None:
        """The reading of :meth:`read_batch`: ``scan`` hands records to ``append``;
        sets ``batch``'s ``first_seq`` and ``nbytes`` (and ``n``)."""
        if max_records < 1:
            raise ValueError(f"max_records={max_records} must be at least 1")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes} must not be negative")
        tail = self._load_tail()
        pos = self._read_pos
        if tail == pos:
            seq = self._read_seq
            batch.first_seq = seq if seq is not None else self._q[W_COMMITTED]
            return
        self._check_positions(tail)
        seq = self._read_seq
        if seq is None:
            try:
                seq = self._seq_at(pos, tail)
            except RingCorrupted:
                if not self._settling(pos):
                    raise
                batch.first_seq = self._q[W_COMMITTED]
                return
        first_seq = seq
        cap = self.capacity
        mask = cap - 1
        dend = HEADER_SIZE + cap
        mm = self._mm
        budget = _NO_BUDGET if max_bytes is None else max_bytes
        limit = self.max_record_bytes
        nbytes = 0
        before_pad = -1  # where padding began, until a record after it is taken
        while pos < tail:
            count = max_records - (seq - first_seq)
            if count <= 0:
                break
            rel = pos & mask
            off = HEADER_SIZE + rel
            seg_end = off + min(cap - rel, tail - pos)
            new_off, seq, nbytes, why = scan(mm, off, seg_end, seq, count, nbytes, budget,
                                             limit, seq != first_seq, append)
            if new_off != off:
                pos += new_off - off
                before_pad = -1
            if why == _STOP_DONE:
                break
            if why == _STOP_END:
                continue  # at the end of the data area (next lap) or at tail
            # A frame the fast loop did not take: padding, or corruption.
            if _WORD_UNPACK(mm, new_off)[0] == PAD64 and seg_end == dend:
                before_pad = pos
                pos += dend - new_off
                continue
            if seq != first_seq:
                break  # hand out the good records; the next call looks again
            try:
                self._diagnose(pos, new_off, seg_end, seq)
            except RingCorrupted:
                if not self._settling(pos):
                    raise
                break  # not visible yet, maybe: read it again next time
        if before_pad >= 0:
            # Stop before the padding: the read position (and so a committed
            # head) always ends where the last record taken ends.
            pos = before_pad
        self._read_pos = pos
        self._read_seq = seq
        batch.first_seq = first_seq
        batch.nbytes = nbytes
        if isinstance(batch, PackedBatch):
            batch.n = seq - first_seq

    def _settling(self, pos: int) -> bool:
        """May the bad frame at ``pos`` still be in flight? (module doc: settling)

        True for ``settle_s`` from the first look that found it bad; after that
        it is damage that persists, and every later look raises.
        """
        now = time.monotonic()
        first = self._unsettled
        if first is None or first[0] != pos:
            first = self._unsettled = (pos, now + self._settle_s)
        if now < first[1]:
            self.unsettled_looks += 1
            return True
        return False

    def _seq_at(self, pos: int, tail: int) -> int:
        """The sequence number of the frame at ``pos`` (after a restart or rollback).

        It must lie in ``[committed, written]``: a reader that was killed
        between storing ``head`` and ``committed`` leaves ``committed``
        behind, never ahead; ``written`` is stored just after ``tail``.
        """
        mm = self._mm
        dend = HEADER_SIZE + self.capacity
        off = HEADER_SIZE + (pos & (self.capacity - 1))
        if _WORD_UNPACK(mm, off)[0] == PAD64:
            pos += dend - off
            off = HEADER_SIZE
            if pos + FRAME_HEADER_SIZE > tail:
                self._corrupt(pos, "padding reaches past the published data")
        if off + FRAME_HEADER_SIZE > dend:
            self._corrupt(pos, "frame header runs past the end of the data area")
        fseq = _FRAME_UNPACK(mm, off)[2]
        committed = self._q[W_COMMITTED]
        written = self._q[W_WRITTEN]
        if not committed <= fseq <= written:
            self._corrupt(pos, f"sequence {fseq} outside [committed={committed}, "
                               f"written={written}]")
        return fseq

    def _diagnose(self, pos: int, off: int, seg_end: int, seq: int) -> None:
        """Raise :class:`RingCorrupted` naming what is wrong with the frame at ``off``."""
        dend = HEADER_SIZE + self.capacity
        word = _WORD_UNPACK(self._mm, off)[0]
        if word == PAD64:
            self._corrupt(pos, "padding marker where the published data ends before "
                               "the end of the data area")
        if off + FRAME_HEADER_SIZE > dend:
            self._corrupt(pos, "frame header runs past the end of the data area")
        length, check, fseq = _FRAME_UNPACK(self._mm, off)
        limit = self.max_record_bytes
        if length > limit:
            self._corrupt(pos, f"frame length {length} exceeds max_record_bytes {limit}")
        frame = FRAME_HEADER_SIZE + align8(length)
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
        self._q[W_HEAD] = pos
        self._head = pos
        self._head_seq = self._read_seq
        if self._read_seq is not None:
            self._q[W_COMMITTED] = self._read_seq

    def rollback(self) -> None:
        """Forget what was read since the last commit; it will be read again."""
        self._read_pos = self._head
        self._read_seq = self._head_seq

    @property
    def has_uncommitted(self) -> bool:
        return self._read_pos != self._head

    def available_bytes(self) -> int:
        return self._q[W_TAIL] - self._read_pos

    def is_empty(self) -> bool:
        return self._q[W_TAIL] == self._head

    def producer_closed(self) -> bool:
        """True once the producer closed the ring: it writes nothing more."""
        return bool(self._q[W_CLOSED])

    def used_bytes(self) -> int:
        """Bytes the producer cannot reuse yet: everything after the committed head."""
        return self._q[W_TAIL] - self._head

    # -- stats and lifecycle ----------------------------------------------
    def stats(self) -> RingStats:
        """A snapshot of the header, read with ``pread`` (:func:`ringbuf._probe.read_stats`:
        ``closed``, then the producer's lock, then the positions and counts)."""
        return read_stats(self._fd, self.path, self.header)

    def problem(self) -> tuple[str, str] | None:
        """None while the mapped file is whole and still at its path, else ``(kind, why)``
        (:func:`ringbuf._files.ring_file_problem`): check it before touching the
        mapping of a file others may truncate."""
        return ring_file_problem(self._fd, self.path, HEADER_SIZE + self.capacity)

    def close(self) -> None:
        """Unmap the ring. Uncommitted records stay for the next reader."""
        if self._fd < 0:
            return
        unmap(self._mm, (self._q, self._mv), self._fd)
        self._fd = -1

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RingReader(path={self.path!r}, capacity={self.capacity})"
