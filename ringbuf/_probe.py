"""Looking at a ring without mapping it: :class:`RingProbe` and :func:`read_stats`.

A process that only needs a ring's counters and whether its producer is
alive (the daemon's supervisor, :func:`ringbuf.discover`) reads the header
with ``pread``. A mapping of a file that another process truncates turns
the next access into ``SIGBUS``, which kills the process; ``pread`` of a
truncated file just returns fewer bytes, which is reported as
:class:`RingCorrupted`. The file is opened read-only; the probe never
changes a ring.

Order of the reads (:func:`read_stats`): ``closed`` first, then the
producer's lock, then the positions and counts, so a producer that writes
a last record and then closes or exits meanwhile shows that record as
unread, never as a finished, drained ring (the daemon removes those).
"""

from __future__ import annotations

import os
import struct

from ._errors import RingCorrupted
from ._files import open_ring_file, producer_alive, ring_file_problem
from ._layout import (
    HEADER_SIZE,
    W_CLOSED,
    W_COMMITTED,
    W_DROPPED_FULL,
    W_DROPPED_OVERSIZE,
    W_HEAD,
    W_TAIL,
    W_WRITTEN,
    Header,
    RingStats,
)

_FIRST = W_TAIL  # the words read in one pread: tail .. committed
_LAST = W_COMMITTED
_WORDS = struct.Struct(f"<{_LAST - _FIRST + 1}Q")


def _pread_exact(fd: int, n: int, offset: int, path: str) -> bytes:
    raw = os.pread(fd, n, offset)
    if len(raw) != n:
        raise RingCorrupted(f"ring {path}: the header is cut short ({len(raw)} of {n} bytes "
                            f"at offset {offset}): the file was truncated")
    return raw


def read_stats(fd: int, path: str, header: Header) -> RingStats:
    """A :class:`RingStats` snapshot of the ring open on ``fd``, read with ``pread``."""
    closed = bool(struct.unpack("<Q", _pread_exact(fd, 8, W_CLOSED * 8, path))[0])
    alive = producer_alive(fd, header.producer_pid, header.producer_start_time)
    w = _WORDS.unpack(_pread_exact(fd, _WORDS.size, _FIRST * 8, path))
    tail, head = w[W_TAIL - _FIRST], w[W_HEAD - _FIRST]
    if head > tail or tail - head > header.capacity or head & 7 or tail & 7:
        raise RingCorrupted(f"ring {path}: impossible positions head={head} tail={tail} "
                            f"(capacity={header.capacity})")
    return RingStats(
        path=path,
        ring_id=header.ring_id,
        written=w[W_WRITTEN - _FIRST],
        dropped_full=w[W_DROPPED_FULL - _FIRST],
        dropped_oversize=w[W_DROPPED_OVERSIZE - _FIRST],
        committed=w[W_COMMITTED - _FIRST],
        bytes_used=tail - head,
        capacity=header.capacity,
        max_record_bytes=header.max_record_bytes,
        producer_pid=header.producer_pid,
        producer_start_time=header.producer_start_time,
        producer_alive=alive,
        closed=closed,
        created_at=header.created_at,
    )


class RingProbe:
    """A ring file open read-only, never mapped. Open with :meth:`RingProbe.open`."""

    path: str
    header: Header

    def __init__(self) -> None:  # pragma: no cover - use open()
        raise TypeError("use RingProbe.open(path)")

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, check_owner: bool = True) -> RingProbe:
        """Open and validate ``path`` (as :class:`RingReader.open` does) without mapping it."""
        path = str(path)
        fd, header = open_ring_file(path, check_owner=check_owner, writable=False)
        self = object.__new__(cls)
        self.path = path
        self.header = header
        self._fd = fd
        return self

    @property
    def ring_id(self) -> str:
        return self.header.ring_id

    @property
    def size(self) -> int:
        return HEADER_SIZE + self.header.capacity

    def stats(self) -> RingStats:
        """The header's counters and the producer's liveness (:func:`read_stats`)."""
        if self._fd < 0:
            raise ValueError(f"probe of {self.path} is closed")
        return read_stats(self._fd, self.path, self.header)

    def problem(self) -> tuple[str, str] | None:
        """None while the file is whole and still at its path, else ``(kind, why)``
        (:func:`ringbuf._files.ring_file_problem`)."""
        return ring_file_problem(self._fd, self.path, self.size)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RingProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RingProbe(path={self.path!r}, capacity={self.header.capacity})"
