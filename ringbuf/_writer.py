"""The producer side: :class:`RingWriter` and its hot path.

``try_write`` and ``write_unlocked`` are closures built by
:func:`_make_writers` over the producer's state in closure cells: attribute
and global lookups would cost more than the copy itself at these sizes. Per
payload size a ``(Struct("<QQ{n}s").pack_into, frame size, header word)``
entry is cached, so one ``pack_into`` call copies the 16-byte frame header
and the payload. The fast path is: look up the size entry, one comparison
with ``stop`` (a bound that needs no other check, see :func:`_make_writers`),
``pack_into``, two 8-byte stores (``tail``, then ``written``). Anything else
(a size not seen yet, an oversize or non-bytes payload, the end of the data
area, a possibly full ring, and ``checksum=True``, whose CRC costs more than
the checks) goes through ``careful``, the reference implementation of the
room rule of :mod:`ringbuf._layout`.

With ``thread_safe=True`` the fast path is inlined under an in-process
``threading.Lock`` taken with bound ``acquire``/``release`` (cheaper than
``with lock`` or a nested call); ``write_unlocked`` is the same code without
the lock, for callers that serialise writes themselves. No lock-free scheme
between threads is used: a thread switch can happen between any two
bytecodes, so the lock is what makes the read-modify-write of the producer
state safe. ``python -m bench ring`` prints what a write costs.

A ring file removed or replaced under its live producer (by an operator,
a tmpfs clean-up, a daemon that quarantined it) would take every later
record into a file nobody reads. With ``on_gone`` the writer looks at its
file (:func:`ringbuf._files.ring_file_problem`: two ``stat`` calls) at most
every ``check_interval_s``, in ``careful`` only: the fast path's bound
``stop`` is also capped by the bytes the measured write rate would put
before the next look is due, so a busy producer takes ``careful`` about
once per interval and a slow one on every write (which a slow producer can
afford). Nothing is added per call. When the file is gone, ``on_gone(payload,
why)`` gets the write (the client opens a new ring and counts what the old
one held unread).

Payloads are ``bytes`` (or ``bytearray``); anything else is a ``TypeError``
and a payload over ``max_record_bytes`` is :class:`RecordTooLarge`
(counted in ``dropped_oversize``). Neither changes the ring. A full ring
makes ``try_write`` return False, counted in ``dropped_full`` unless
``count_full_drops=False``.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable

from ._errors import RecordTooLarge
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
    PAD64,
    RING_SUFFIX,
    TAG,
    W_CLOSED,
    W_COMMITTED,
    W_DROPPED_FULL,
    W_DROPPED_OVERSIZE,
    W_HEAD,
    W_TAIL,
    W_WRITTEN,
    Header,
    check_capacity,
)

_TAG = TAG << 32
_CACHE_LIMIT = 4096  # payload sizes whose frame packer the fast path keeps


OnGone = Callable[[bytes, str], bool]


def _make_writers(q: memoryview, mv: memoryview, capacity: int, max_record: int,
                  checksum: bool, lock: threading.Lock | None,
                  count_full: bool = True, check: Callable[[], str | None] | None = None,
                  on_gone: OnGone | None = None,
                  check_interval_s: float = 1.0):  # type: ignore[no-untyped-def]
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
    checks, the room rule, padding, the CRC) and re-reads ``head`` only when
    the cached value says the ring is full; the fast path handles only the
    common case (no wrap, room known, payload size already seen) and hands
    everything else to ``careful``.

    With ``check`` (None while the file is fine, else why not), ``careful``
    calls it at most every ``check_interval_s`` and hands the write to
    ``on_gone`` when it answers; ``stop`` is then also capped so that the fast
    path, at the rate measured between two ``careful`` calls, reaches it about
    when the next check is due (cells ``next_check``, ``mark_t``, ``mark_pos``).
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
    monotonic = time.monotonic
    next_check = 0.0  # the first careful write looks at the file
    mark_t = 0.0
    mark_pos = 0

    def careful(payload: bytes) -> bool:
        nonlocal off, tbase, seq, head, stop, next_check, mark_t, mark_pos
        if check is not None:
            now = monotonic()
            if now >= next_check:
                why = check()
                if why is not None:
                    return on_gone(payload, why)  # type: ignore[misc]
                next_check = now + check_interval_s
        if not isinstance(payload, (bytes, bytearray)):
            raise TypeError(
                f"payload must be bytes (or bytearray), got {type(payload).__name__}"
            )
        n = len(payload)
        if n > max_record:
            q[W_DROPPED_OVERSIZE] += 1
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
            head = q[W_HEAD]  # the consumer's one store; a plain 8-byte load
            used = tbase + off - head
            if used + need > capacity:
                if count_full:
                    q[W_DROPPED_FULL] += 1
                return False
        if frame > contig:
            if contig:
                # Mark the rest of the area as padding (contig >= 8: aligned).
                q[off >> 3] = PAD64
            tbase += capacity
            off = base
        if checksum:
            word = n | (crc32(payload) << 32)
        pack(mv, off, word, seq, payload)
        seq += 1
        off += frame
        free = capacity - (tbase + off - head)
        room = min(free, dend - off)
        if check is not None:
            # Bytes the fast path may write before the next check is due, at the
            # rate since the last careful write (0: careful again next time).
            pos = tbase + off
            dt = now - mark_t
            if dt > 0:
                room = min(room, int((pos - mark_pos) * (next_check - now) / dt))
            mark_t, mark_pos = now, pos
        stop = off + room
        # Publish: one aligned 8-byte store makes the frame (and any padding
        # before it) visible; then the record counter.
        q[W_TAIL] = tbase + off
        q[W_WRITTEN] = seq
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
            q[16] = tbase + end  # W_TAIL (a constant index: cheaper than a global)
            q[17] = seq  # W_WRITTEN
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
                q[16] = tbase + end  # W_TAIL
                q[17] = seq  # W_WRITTEN
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
        on_gone: OnGone | None = None,
        check_interval_s: float = 1.0,
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
        the lock of a ``thread_safe`` writer).
        """
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
        size = HEADER_SIZE + capacity_bytes
        check = None
        if on_gone is not None:
            def check() -> str | None:
                problem = ring_file_problem(fd, self.path, size)
                return None if problem is None else problem[1]
        self.try_write, self.write_unlocked, self._written_fn = _make_writers(
            self._q, self._mv, capacity_bytes, max_record_bytes, checksum,
            self._lock, count_full_drops, check, on_gone, check_interval_s)
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
        unmap(self._mm, (self._q, self._mv), self._fd)

    def __enter__(self) -> RingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RingWriter(path={self.path!r}, capacity={self.capacity})"


