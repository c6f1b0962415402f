"""``record_hit``, the client's hot path, and the two cells it is steered by.

``record_hit(record)`` encodes the record (``ormsgpack.packb``, one C call;
the converting slow encoder runs only when it raises or for a mapping that
is not a ``dict``) and, under the client's in-process lock, hands the bytes
to ``write`` (the ring's lock-free ``RingWriter.write_unlocked`` while a
ring is open). Everything it touches is a closure cell: a call costs the
encoder, the lock and the ring's copy, nothing else (``python -m bench
record_hit`` prints what that is). Bound ``acquire``/``release`` under
``try``/``finally`` cost less than ``with lock``.

The client's life cycle (:mod:`collector._core`) steers the hot path
through two setters and never touches it otherwise: ``set_write`` installs
the function that takes the encoded bytes (the ring's writer, the opener
that creates the ring on first use, the refusal after ``stop()``), and
``set_lock`` installs a new lock (after a fork).

The native path (``native=True``, :mod:`ringbuf._native`): ``record_hit``
is a C callable (``ringbuf._cring.Hot``, no Python frame) that hands the
record to the open ring's native writer (``set_take`` installs it, or None),
which encodes it straight into the ring's next frame and publishes it, with
no Python lock: the C call holds the GIL and runs no Python code, so it is
atomic with respect to the other threads, and it declines while the ring's
careful path (Python, under the lock) moves the position. What it declines
(a type needing conversion, an oversize record, a new lap, a possibly full
ring, a look at the file due, no ring open, stopped) goes through the pure
``record_hit`` above, unchanged.

With the block policy a write that finds the ring full asks ``note_full``
(with the lock held: is a ring open, so that waiting makes sense?) and then
``wait_for_room`` (without the lock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

Encoder = Callable[[Any], bytes]
Write = Callable[[bytes], bool]


class HotPath(NamedTuple):
    record_hit: Callable[[Mapping[str, Any]], bool]
    set_write: Callable[[Write], None]
    set_lock: Callable[[threading.Lock], None]
    set_take: Callable[[Any], None]  # the open ring's native writer, or None


def make_record_hit(fast: Encoder, slow: Encoder, write: Write, lock: threading.Lock, *,
                    note_full: Callable[[], bool] | None = None,
                    wait_for_room: Write | None = None, native: bool = False) -> HotPath:
    """Build ``record_hit`` over ``write`` and ``lock``, and its setters.

    With ``native`` it first tries the native writer ``set_take`` installs
    (module doc).

    Without ``note_full`` a full ring is a drop (the ring counts it); with
    ``note_full`` and ``wait_for_room`` (the block policy) the hot path
    waits for room when ``note_full()`` says a ring is open.
    """
    acquire, release = lock.acquire, lock.release

    def set_write(new_write: Write) -> None:
        nonlocal write
        write = new_write

    def set_lock(new_lock: threading.Lock) -> None:
        nonlocal acquire, release
        acquire, release = new_lock.acquire, new_lock.release

    if note_full is None:
        def record_hit(record: Mapping[str, Any]) -> bool:
            if type(record) is dict:
                try:
                    payload = fast(record)
                except Exception:
                    payload = slow(record)
            else:
                payload = slow(record)
            acquire()
            try:
                return write(payload)
            finally:
                release()
    else:
        if wait_for_room is None:
            raise TypeError("note_full needs wait_for_room")

        def record_hit(record: Mapping[str, Any]) -> bool:
            if type(record) is dict:
                try:
                    payload = fast(record)
                except Exception:
                    payload = slow(record)
            else:
                payload = slow(record)
            acquire()
            try:
                if write(payload):
                    return True
                if not note_full():
                    return False  # stopped, or no ring: already counted
            finally:
                release()
            return wait_for_room(payload)

    if not native:
        return HotPath(record_hit, set_write, set_lock, _no_take)
    from ringbuf import _native

    hot = _native.new_hot(record_hit)  # what the native writer declines goes to record_hit
    return HotPath(hot, set_write, set_lock, hot.set_writer)


def _no_take(writer: Any) -> None:
    """The pure path's ``set_take``: it has nothing to install."""
