"""A ring as one flusher serves it: its reader and lock, the pending batch, its arrival rate.

A flusher opens a ring only under the ring's consumer lock (an OFD lock on
byte ``CONSUMER_LOCK``, :mod:`ringbuf._layout`; the producer's lock is on
another byte, so the two never conflict), so two consumers can never serve
one ring, even across two daemons or a flusher orphaned by a killed
supervisor. A ring locked by another consumer is tried again every
``LOCK_RETRY_S``. A ring that cannot be served raises :class:`Unservable`
with the report for the supervisor. Before each batch the flusher makes
sure the file is still whole and still the one at its path
(:meth:`ServedRing.problem`): a mapping of a file someone truncated would
fault.
"""

from __future__ import annotations

import os

import ringbuf
from collector.common.log import get_logger

from ._messages import BadKind, BadRing

_log = get_logger(__name__)

LOCK_RETRY_S = 0.1
MIN_SLEEP_S = 0.001
BURST_BYTES_PER_S = 64 * 1024 * 1024  # the burst an idle ring must absorb between two looks
RATE_WINDOW_S = 0.01  # arrival rates are measured over windows at least this long


def _bad_kind(exc: ringbuf.RingError) -> BadKind:
    if isinstance(exc, ringbuf.RingPermissionError):
        return BadKind.PERMISSION
    if isinstance(exc, ringbuf.NotARing):
        return BadKind.NOT_A_RING
    return BadKind.CORRUPTED


class Unservable(Exception):
    """The ring cannot be served; ``report`` says why, for the supervisor."""

    def __init__(self, report: BadRing) -> None:
        super().__init__(report.message)
        self.report = report


class RingGone(Exception):
    """The ring file no longer exists."""


class ServedRing:
    __slots__ = ("burst_s", "byte_rate", "checked_at", "corrupt", "first_at", "first_seq",
                 "key", "key_bytes", "lock_fd", "next_try", "no", "path", "pending",
                 "pending_bytes", "pending_n", "reader", "rec_rate", "warned_busy", "win_bytes",
                 "win_recs", "win_start")

    def __init__(self, path: str, no: int = 0) -> None:
        self.path = path
        self.no = no  # the supervisor's number for it (Assign.no)
        self.reader: ringbuf.RingReader | None = None
        self.lock_fd = -1
        self.key = ""
        self.key_bytes = b""
        # records read and not yet accepted by Redis, as msgpack bins in byte strings
        # (ringbuf.PackedBatch.parts): pending_n records of pending_bytes payload bytes
        self.pending: list[bytes] = []
        self.pending_n = 0
        self.pending_bytes = 0
        self.first_seq = 0
        self.first_at = 0.0
        self.corrupt: str | None = None
        self.next_try = 0.0
        self.warned_busy = False
        self.checked_at = 0.0  # when this ring was last read (0.0: never)
        self.burst_s = MIN_SLEEP_S  # see the flusher's module doc; set when the ring is opened
        # arrival rate (EWMA over windows of RATE_WINDOW_S or more): bytes/s, records/s
        self.byte_rate = 0.0
        self.rec_rate = 0.0
        self.win_start = 0.0
        self.win_bytes = 0
        self.win_recs = 0

    def open(self, now: float, keys: list[str]) -> bool:
        """Lock and open the ring, to be sent to its shard of ``keys``; False: not yet.

        Raises :class:`RingGone` if the file is gone, :class:`Unservable`
        for a ring to refuse or quarantine.
        """
        if now < self.next_try:
            return False
        self.next_try = now + LOCK_RETRY_S
        path = self.path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise RingGone(path) from None
        except OSError as exc:
            raise Unservable(BadRing(path, BadKind.PERMISSION,
                                     f"cannot open ring {path}: {exc}")) from None
        try:
            locked = ringbuf.lock_consumer(fd)
        except OSError as exc:
            os.close(fd)
            raise Unservable(BadRing(path, BadKind.PERMISSION,
                                     f"cannot lock ring {path}: {exc}")) from None
        if not locked:
            os.close(fd)
            if not self.warned_busy:
                self.warned_busy = True
                _log.warning("Ring is locked by another consumer; waiting for it.", ring=path)
            return False
        try:
            reader = ringbuf.RingReader.open(path)
        except FileNotFoundError:
            os.close(fd)
            raise RingGone(path) from None
        except (ringbuf.RingPermissionError, ringbuf.NotARing, ringbuf.RingCorrupted) as exc:
            os.close(fd)
            raise Unservable(BadRing(path, _bad_kind(exc), str(exc))) from None
        self.lock_fd = fd
        self.reader = reader
        self.burst_s = max(MIN_SLEEP_S, reader.capacity / 2 / BURST_BYTES_PER_S)
        # rings are numbered from 1 as the supervisor finds them: round robin over shards
        self.key = keys[(self.no - 1) % len(keys)]
        self.key_bytes = self.key.encode()
        _log.debug("Serving ring.", ring=path, ring_id=reader.ring_id, shard=self.key)
        return True

    def problem(self) -> BadRing | None:
        """None while the open ring's file is whole and at its path, else the report.

        Raises :class:`RingGone` when the file was removed (nothing to report:
        the supervisor forgets it).
        """
        assert self.reader is not None
        found = self.reader.problem()
        if found is None:
            return None
        kind, why = found
        if kind == "gone":
            raise RingGone(self.path)
        return BadRing(self.path, BadKind.CHANGED, f"ring {self.path}: {why}")

    def observe(self, now: float, nrecs: int, nbytes: int) -> None:
        """Account one read (possibly empty) at ``now`` to the arrival rate."""
        if self.win_start == 0.0:
            self.win_start = now
            return
        self.win_bytes += nbytes
        self.win_recs += nrecs
        span = now - self.win_start
        if span >= RATE_WINDOW_S:
            self.byte_rate = 0.5 * self.byte_rate + 0.5 * self.win_bytes / span
            self.rec_rate = 0.5 * self.rec_rate + 0.5 * self.win_recs / span
            self.win_start = now
            self.win_bytes = self.win_recs = 0

    def next_look(self, now: float, due: float, batch_size: int, batch_bytes: int) -> float:
        """When to read the ring again, its batch being due at ``due`` (the flusher's
        module doc: sooner when, at the measured rate, the batch fills or the ring
        would be half full, or a burst could fill half of it)."""
        assert self.reader is not None
        reader = self.reader
        wake = min(due, now + self.burst_s)
        if self.byte_rate > 0.0 and self.rec_rate > 0.0:
            left = min((batch_size - self.pending_n) / self.rec_rate,
                       (batch_bytes - self.pending_bytes) / self.byte_rate,
                       (reader.capacity / 2 - reader.used_bytes()) / self.byte_rate)
            wake = min(wake, now + left)
        return max(wake, now + MIN_SLEEP_S)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()  # uncommitted records stay for the next reader
            self.reader = None
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # releases the consumer lock
            self.lock_fd = -1
        self.pending = []
        self.pending_n = 0
        self.pending_bytes = 0
