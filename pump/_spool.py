"""A sink's durable spool: stream entries moved out of Redis, in stream order, on disk.

One spool is one directory, ``<spool_dir>/<consumer name>``
(``<instance>:<sink>:<worker index>``), owned by one worker process (an
``flock`` on ``lock``), verified private (this user's, not
group/other-writable: :mod:`collector.common.private`). It holds
append-only segment files ``<16 digits>.seg`` and a ``cursor`` file.

A segment is a sequence of frames::

    magic b"SPL1" | payload length (u32 LE) | CRC-32 of the payload (u32 LE) | payload

and a payload is the msgpack array ``[shard key, entry id, {field: value}]``
of one stream entry, exactly as it was read (so a sink gets the same record
ids from the spool as from the stream). :meth:`Spool.append` writes a batch
of frames and ``fsync``\\ s the segment once before it returns: an entry is
acknowledged in Redis only after that. ``cursor`` is ``<segment>
<offset>\\n``, the first frame not yet delivered, replaced atomically
(written, fsync-ed, renamed, directory fsync-ed) after each delivered batch;
``holes`` lists frames ``drop_oldest`` dropped behind a batch being
delivered (the cursor cannot pass that batch yet), skipped at open.
At open, frames after the cursor are read until the first torn one (a
crash mid-append: that batch was never acknowledged, it comes again from
Redis), which is cut off. Segments wholly before the cursor are deleted.

The spool holds at most ``max_bytes`` of undelivered frames. When an append
would pass it, ``overflow`` decides: ``block`` (nothing more is taken: the
entries stay in Redis, which holds the stream and, at the daemon's budget,
the producers) or ``drop_oldest`` (the oldest frames are dropped, and their
records counted, until the batch fits).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from collector.common.private import private_directory

MAGIC = b"SPL1"
_HEAD = struct.Struct("<4sII")
SEGMENT_BYTES = 16 << 20

#: one spooled stream entry: (shard key, entry id, fields)
Entry = tuple[str, str, dict[bytes, bytes]]


@dataclass(slots=True)
class Frame:
    """Where one spooled entry is (its bytes stay on disk until it is read)."""

    seg: int
    offset: int
    end: int  # offset after the frame
    records: int  # the entry's n


class SpoolFull(Exception):
    """``overflow: block`` and the batch does not fit."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _records_of(fields: dict[bytes, bytes]) -> int:
    try:
        return int(fields.get(b"n", b"1"))
    except ValueError:
        return 1


class Spool:
    """The spool of one sink's worker (module docstring). Thread-safe."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int,
                 overflow: str = "drop_oldest", segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = private_directory(directory, "spool_dir")
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.segment_bytes = segment_bytes
        self.lock = threading.Lock()
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RuntimeError(f"spool {self.dir} is used by another process") from None
        self.frames: list[Frame] = []  # undelivered, in order
        self.bytes = 0
        self.out = 0  # frames at the head handed out by peek, not yet committed
        self.holes: set[tuple[int, int]] = set()  # dropped frames after the cursor
        self._recover()

    # -- opening -------------------------------------------------------------
    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())

    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:016d}.seg"

    def _recover(self) -> None:
        cur_seg, cur_off = 0, 0
        try:
            a, b = (self.dir / "cursor").read_text().split()
            cur_seg, cur_off = int(a), int(b)
        except (FileNotFoundError, ValueError):
            pass
        try:
            self.holes = {(int(a), int(b)) for a, b in (
                line.split() for line in (self.dir / "holes").read_text().splitlines())}
        except (FileNotFoundError, ValueError):
            self.holes = set()
        segs = self._segments()
        for seg in segs:
            if seg < cur_seg:
                self._path(seg).unlink(missing_ok=True)
                continue
            start = cur_off if seg == cur_seg else 0
            good_end = self._scan(seg, start)
            if good_end < self._path(seg).stat().st_size:  # a torn tail: never acknowledged
                with open(self._path(seg), "r+b") as fh:
                    fh.truncate(good_end)
                    os.fsync(fh.fileno())
        self.seg = max(segs[-1] if segs else 0, cur_seg)
        if not segs:
            self._path(self.seg).touch(mode=0o600)
        self.seg_size = self._path(self.seg).stat().st_size

    def _scan(self, seg: int, start: int) -> int:
        data = self._path(seg).read_bytes()
        pos = start
        while pos + _HEAD.size <= len(data):
            magic, length, crc = _HEAD.unpack_from(data, pos)
            body = data[pos + _HEAD.size:pos + _HEAD.size + length]
            if magic != MAGIC or len(body) != length or zlib.crc32(body) != crc:
                break
            end = pos + _HEAD.size + length
            if (seg, pos) not in self.holes:  # not dropped by drop_oldest
                _, _, fields = _unpack(body)
                self.frames.append(Frame(seg, pos, end, _records_of(fields)))
                self.bytes += end - pos
            pos = end
        return pos

    # -- writing -------------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> int:
        """Write ``entries`` and fsync; returns the records dropped to make room.

        Raises :class:`SpoolFull` (nothing written) for ``block`` when they do not fit.
        """
        blobs = []
        for key, eid, fields in entries:
            body = msgpack.packb([key, eid, fields], use_bin_type=True)
            blobs.append(_HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body)
        need = sum(len(b) for b in blobs)
        if not blobs:
            return 0
        with self.lock:
            dropped = 0
            if self.bytes + need > self.max_bytes:
                if self.overflow == "block":
                    raise SpoolFull(f"spool {self.dir} holds {self.bytes} bytes "
                                    f"(spool_max_bytes {self.max_bytes})")
                dropped = self._drop_oldest(self.bytes + need - self.max_bytes)
            if self.seg_size >= self.segment_bytes:
                self.seg += 1
                self.seg_size = 0
            path = self._path(self.seg)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, b"".join(blobs))
                os.fsync(fd)
            finally:
                os.close(fd)
            if self.seg_size == 0:
                _fsync_dir(self.dir)
            pos = self.seg_size
            for blob, (_, _, fields) in zip(blobs, entries, strict=True):
                self.frames.append(Frame(self.seg, pos, pos + len(blob), _records_of(fields)))
                pos += len(blob)
            self.seg_size = pos
            self.bytes += need
            return dropped

    def _drop_oldest(self, room: int) -> int:
        """Drop frames from the head until ``room`` bytes are free (lock held)."""
        first = n = min(self.out, len(self.frames))  # never the batch being delivered
        freed = records = 0
        while n < len(self.frames) and freed < room:
            f = self.frames[n]
            freed += f.end - f.offset
            records += f.records
            n += 1
        gone = {(f.seg, f.offset) for f in self.frames[first:n]}
        del self.frames[first:n]
        self.bytes -= freed
        if first == 0:
            nxt = (self.frames[0].seg, self.frames[0].offset) if self.frames else (
                self.seg, self.seg_size)
            self._write_cursor(*nxt)
        else:  # the cursor stays before the batch in flight: remember the hole after it
            self.holes.update(gone)
            self._write_holes()
        return records

    def _write_holes(self) -> None:
        tmp = self.dir / "holes.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, "".join(f"{a} {b}\n" for a, b in sorted(self.holes)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.dir / "holes")
        _fsync_dir(self.dir)

    # -- reading -------------------------------------------------------------
    def peek(self, max_entries: int) -> list[tuple[Frame, Entry]]:
        """The oldest undelivered entries (at most ``max_entries``), not yet committed."""
        with self.lock:
            frames = self.frames[:max_entries]
            self.out = len(frames)  # in flight until the next peek or commit
            out = []
            fh = None
            try:
                for f in frames:
                    if fh is None or fh.name != str(self._path(f.seg)):
                        if fh is not None:
                            fh.close()
                        fh = open(self._path(f.seg), "rb")
                    fh.seek(f.offset + _HEAD.size)
                    out.append((f, _unpack(fh.read(f.end - f.offset - _HEAD.size))))
            finally:
                if fh is not None:
                    fh.close()
            return out

    def commit(self, done: Sequence[Frame]) -> None:
        """``done`` (a prefix :meth:`peek` gave) was delivered: move the cursor past it."""
        if not done:
            return
        with self.lock:
            last = done[-1]
            n = 0
            while n < len(self.frames) and (self.frames[n].seg, self.frames[n].offset) <= (
                    last.seg, last.offset):
                n += 1
            if n == 0:
                return  # dropped meanwhile (drop_oldest)
            gone = self.frames[:n]
            del self.frames[:n]
            self.out = 0
            self.bytes -= sum(f.end - f.offset for f in gone)
            nxt = (self.frames[0].seg, self.frames[0].offset) if self.frames else (
                self.seg, self.seg_size)
            self._write_cursor(*nxt)

    def _write_cursor(self, seg: int, offset: int) -> None:
        tmp = self.dir / "cursor.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{seg} {offset}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.dir / "cursor")
        _fsync_dir(self.dir)
        if self.holes:
            left = {h for h in self.holes if h >= (seg, offset)}
            if left != self.holes:
                self.holes = left
                self._write_holes()
        for old in self._segments():
            if old < seg:
                self._path(old).unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self.frames)

    def records(self) -> int:
        with self.lock:
            return sum(f.records for f in self.frames)

    def close(self) -> None:
        os.close(self._lock_fd)


def _unpack(body: bytes) -> Entry:
    key, eid, fields = msgpack.unpackb(body, raw=True, strict_map_key=False)
    return key.decode(), eid.decode(), fields


def spool_directory(spool_dir: str, consumer: str) -> Path:
    """The spool of the worker whose consumer name is ``consumer``."""
    return Path(spool_dir) / consumer


def entry_fields(fields: Any) -> dict[bytes, bytes]:
    """Stream fields as bytes -> bytes (what XREADGROUP gives without decode_responses)."""
    return {(k if isinstance(k, bytes) else str(k).encode()):
            (v if isinstance(v, bytes) else str(v).encode()) for k, v in fields.items()}
