"""The producer side: :class:`RingWriter`.

Its write functions (``try_write``, ``write_unlocked`` and, on the native
path, ``write_record``) are installed per instance by
:func:`ringbuf._writepath._make_writers`, which documents the hot path, the
lock and the watch over the file (``on_gone``). Which path a writer takes
is decided when it is created (:mod:`ringbuf._native`): native when the C
extension is built, ``COLLECTOR_PURE_PYTHON`` is not set and
``checksum=False``; ``RingWriter.native`` says which.

Payloads are ``bytes`` (or ``bytearray``); anything else is a ``TypeError``
and a payload over ``max_record_bytes`` is :class:`RecordTooLarge`
(counted in ``dropped_oversize``). Neither changes the ring. A full ring
makes ``try_write`` return False, counted in ``dropped_full`` unless
``count_full_drops=False``. ``write_record(record)`` (a dict, encoded as
msgpack straight into the frame) returns True when it wrote it and None
when it did not take it (always None on the pure path): the caller then
encodes and calls ``write_unlocked``.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
import uuid
from typing import Any

from . import _native
from ._files import (
    create_ring_file,
    default_directory,
    ensure_private_directory,
    prefault,
    process_start_time,
    ring_file_problem,
    unmap,
)
from ._layout import (
    DEFAULT_CAPACITY,
    DEFAULT_MAX_RECORD_BYTES,
    HEADER_SIZE,
    RING_SUFFIX,
    W_CLOSED,
    W_COMMITTED,
    W_DROPPED_FULL,
    W_DROPPED_OVERSIZE,
    W_HEAD,
    W_TAIL,
    Header,
    check_capacity,
)
from ._writepath import OnGone, _make_writers


def _closed_write(payload: bytes) -> bool:
    raise ValueError("this ring writer is closed")


def _not_taken(record: Any) -> None:
    return None  # the pure path's write_record: the caller encodes and writes


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
        on_gone: OnGone | None = None,
        check_interval_s: float = 1.0,
        native: bool | None = None,
    ) -> RingWriter:
        """Create a new ring file (mode 0600, exclusively) in ``directory``.

        The writer holds the producer's lock on it (:mod:`ringbuf._layout`)
        until :meth:`close` or :meth:`abandon`, or until the process exits.
        ``count_full_drops=False`` stops ``try_write`` from counting a full
        ring in ``dropped_full``: for a caller that retries (a blocking
        policy) and counts the final drop itself with :meth:`count_drop`.
        With ``on_gone``, a write that finds the file removed or replaced
        (looked at every ``check_interval_s``, module doc) is handed to
        ``on_gone(payload, why)``, whose result it returns; ``on_gone`` may
        :meth:`abandon` this writer (not :meth:`close` it: the write holds
        the lock of a ``thread_safe`` writer). ``native=None`` takes the
        native path when :func:`ringbuf._native.active_path` says so and
        ``checksum`` is off; ``True`` insists (``RuntimeError`` if not built),
        ``False`` refuses it.
        """
        if native is None:
            native = _native.active_path() == "native" and not checksum
        elif native and not _native.BUILT:
            raise RuntimeError(f"native=True: {_native.why_pure()}")
        elif native and checksum:
            raise ValueError("native=True: checksum rings have no native fast path")
        check_capacity(capacity_bytes, max_record_bytes)
        directory = ensure_private_directory(directory or default_directory())
        ring_id = uuid.uuid4()
        pid = os.getpid()
        if name is None:
            name = f"{pid}-{ring_id.hex[:16]}{RING_SUFFIX}"
        elif "/" in name or name in ("", ".", ".."):
            raise ValueError(f"ring name {name!r} must be a plain file name")
        header = Header(ring_id.hex, capacity_bytes, max_record_bytes, checksum, pid,
                        process_start_time(pid) or 0.0, time.time())
        fd, path = create_ring_file(directory, name, header)
        self = object.__new__(cls)
        self.path = str(path)
        self.ring_id = ring_id.hex
        self.capacity = capacity_bytes
        self.max_record_bytes = max_record_bytes
        self.checksum = checksum
        self._fd = fd
        self._mm = mmap.mmap(fd, HEADER_SIZE + capacity_bytes)
        prefault(self._mm, HEADER_SIZE + capacity_bytes)
        self._mv = memoryview(self._mm)
        self._q = self._mv.cast("Q")
        self._closed = False
        self._pid = pid
        self._lock = threading.Lock() if thread_safe else None
        self._native = _native.new_writer(self._mm, max_record_bytes) if native else None
        self.native = bool(native)
        self.native_writer = self._native  # for ringbuf._cring.Hot (the client), or None
        self.write_record = self._native.write_record if native else _not_taken
        size = HEADER_SIZE + capacity_bytes
        check = None
        if on_gone is not None:
            def check() -> str | None:
                problem = ring_file_problem(fd, self.path, size)
                return None if problem is None else problem[1]
        if self._native is not None and on_gone is not None:
            self._native.watch(fd, self.path, size, check_interval_s)  # the look, in C
        self.try_write, self.write_unlocked, self._written_fn = _make_writers(
            self._q, self._mv, capacity_bytes, max_record_bytes, checksum,
            self._lock, count_full_drops, check, on_gone, check_interval_s, self._native)
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
        return self._q[W_DROPPED_FULL] + self._q[W_DROPPED_OVERSIZE]

    @property
    def uncommitted(self) -> int:
        """Records written that the consumer has not committed (yet)."""
        return self._written_fn() - self._q[W_COMMITTED]

    def free_bytes(self) -> int:
        return self.capacity - (self._q[W_TAIL] - self._q[W_HEAD])

    def count_drop(self) -> None:
        """Count a record the caller dropped for want of room (e.g. after a block timeout)."""
        self._q[W_DROPPED_FULL] += 1

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
                self._q[W_CLOSED] = 1
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
        if self._native is not None:
            self._native.release()  # its buffer first: later native writes decline
        self.write_record = _not_taken
        unmap(self._mm, (self._q, self._mv), self._fd)

    def __enter__(self) -> RingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RingWriter(path={self.path!r}, capacity={self.capacity})"


