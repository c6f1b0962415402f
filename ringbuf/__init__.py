"""Lock-free single-producer/single-consumer rings in shared memory files.

The public surface: :class:`RingWriter` (the producer), :class:`RingReader`
(the consumer), :class:`RingProbe` (a ring's header and liveness, read
without mapping it), :func:`discover`, :func:`check_capacity` (the capacity
rule every ring size must follow), the private-directory check, the
liveness locks, the exception tree of :mod:`ringbuf._errors` and
:func:`ring_path` (``native`` or ``pure``: the path a writer or reader created
now takes, :mod:`ringbuf._native`).

Modules::

    _layout     the binary layout, its constants and the capacity rule (the contract)
    _files      private directories, creating and opening ring files, the liveness locks
    _writer     RingWriter
    _writepath  the producer's write functions (closures; the native glue)
    _native     which path: the C extension _cring (built by pip when it can) or pure Python
    _cring      the native fast path (C, optional): encode into the frame, release/acquire
    _reader     RingReader, RecordBatch, PackedBatch; settling a frame seen before its bytes
    _scan       the reader's frame scanners
    _cread      the flusher's native scanner (C, optional): frames to msgpack bins, one copy
    _probe      RingProbe: header and liveness by pread, never mapped
    _discovery  the rings of a directory
    _errors     the exception tree
"""

from ._discovery import discover, is_ring_name
from ._errors import (
    NotARing,
    RecordTooLarge,
    RingCorrupted,
    RingError,
    RingPermissionError,
    RingVersionMismatch,
)
from ._files import (
    check_private_directory,
    default_directory,
    ensure_private_directory,
    lock_consumer,
    producer_alive,
)
from ._layout import (
    DEFAULT_CAPACITY,
    DEFAULT_MAX_RECORD_BYTES,
    LAYOUT_VERSION,
    RING_SUFFIX,
    RingStats,
    check_capacity,
)
from ._native import active_path as ring_path
from ._probe import RingProbe
from ._reader import PackedBatch, RecordBatch, RingReader
from ._writer import RingWriter

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_RECORD_BYTES",
    "LAYOUT_VERSION",
    "RING_SUFFIX",
    "NotARing",
    "PackedBatch",
    "RecordBatch",
    "RecordTooLarge",
    "RingCorrupted",
    "RingError",
    "RingPermissionError",
    "RingProbe",
    "RingReader",
    "RingStats",
    "RingVersionMismatch",
    "RingWriter",
    "check_capacity",
    "check_private_directory",
    "default_directory",
    "discover",
    "ensure_private_directory",
    "is_ring_name",
    "lock_consumer",
    "producer_alive",
    "ring_path",
]
