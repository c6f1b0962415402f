"""The producer's write functions: closures over its state (:func:`_make_writers`).

``RingWriter.try_write`` and ``write_unlocked`` are closures built by
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

The native path (:mod:`ringbuf._native`, when built and not turned off).
The state then lives in the C ``Writer`` object (members ``off``, ``tbase``,
``seq``, ``stop``, the same meaning), whose ``write_bytes`` and
``write_record`` are the fast path: the frame goes where the pure fast path
would put it, byte for byte, and ``tail`` is published with a release
store. Whatever they decline (they return None) goes to ``careful``,
wrapped so that it loads the state from the object and stores it back, with
``busy`` set meanwhile so that a native call from another thread declines
rather than moving the position under it. A native call holds the GIL and
runs no Python code, so it is atomic with respect to the process's other
threads; checksum rings have no native fast path (the CRC is computed in
``careful``). With ``on_gone`` the native writer also declines once
``next_check`` is reached (``deadline``, a coarse clock read in C), and
its ``stop`` has no byte bound from the write rate: the clock is the bound.
Given ``watch`` (``RingWriter.create`` does, with ``on_gone``) the native
writer makes the look itself when ``deadline`` is due, deciding what
:func:`ringbuf._files.ring_file_problem` decides with one ``stat`` of the
path (its device, inode and size against the open file's), and declines
only when the file is not fine: the careful path (some 10 us: encoding in
Python, the lock, the write) then runs once per lap of the ring or a
reload of ``head``, not once a second, which in a request-rate producer
was the tail of ``record_hit`` (``python -m bench record_tail``).
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from ._errors import RecordTooLarge
from ._layout import (
    HEADER_SIZE,
    PAD64,
    TAG,
    W_DROPPED_FULL,
    W_DROPPED_OVERSIZE,
    W_HEAD,
    W_TAIL,
    W_WRITTEN,
)

_TAG = TAG << 32
_CACHE_LIMIT = 4096  # payload sizes whose frame packer the fast path keeps


OnGone = Callable[[bytes, str], bool]


def _make_writers(q: memoryview, mv: memoryview, capacity: int, max_record: int,
                  checksum: bool, lock: threading.Lock | None,
                  count_full: bool = True, check: Callable[[], str | None] | None = None,
                  on_gone: OnGone | None = None,
                  check_interval_s: float = 1.0,
                  native: Any = None):  # type: ignore[no-untyped-def]
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

    With ``native`` (a ``ringbuf._cring.Writer``, never with ``checksum``) the
    fast path is its ``write_bytes`` and ``careful`` runs on its state (module
    doc).
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
        if check is not None and native is None:
            # Bytes the fast path may write before the next check is due, at the
            # rate since the last careful write (0: careful again next time);
            # the native writer watches the time itself (module doc).
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

    if native is not None:
        def on_native(payload: bytes) -> bool:
            """``careful`` on the native writer's state (module doc)."""
            nonlocal off, tbase, seq
            native.busy = 1
            off, tbase, seq = native.off, native.tbase, native.seq
            try:
                return careful(payload)
            finally:
                native.off, native.tbase, native.seq, native.stop = off, tbase, seq, stop
                if check is not None:
                    native.deadline = next_check  # also a look by time (module doc)
                native.busy = 0

        return _native_writers(native, on_native, lock)

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


def _native_writers(native: Any, careful: Callable[[bytes], bool],
                    lock: threading.Lock | None):  # type: ignore[no-untyped-def]
    """``(try_write, write_unlocked, written)`` over a native writer."""
    write_bytes = native.write_bytes

    def unlocked(payload: bytes) -> bool:
        done = write_bytes(payload)
        if done is None:  # declined: any other type, a new lap, maybe full, too big
            return careful(payload)
        return done  # type: ignore[no-any-return]

    if lock is None:
        locked = unlocked
    else:
        acquire, release = lock.acquire, lock.release

        def locked(payload: bytes) -> bool:
            acquire()
            try:
                done = write_bytes(payload)
                if done is None:
                    return careful(payload)
                return done  # type: ignore[no-any-return]
            finally:
                release()

    def written() -> int:
        return native.seq  # type: ignore[no-any-return]

    return locked, unlocked, written
