"""Lock-free single-producer/single-consumer rings in shared memory files.

The public surface: :class:`RingWriter` (the producer), :class:`RingReader`
(the consumer), :func:`discover` and the exception tree in
:mod:`ringbuf._errors`. The binary layout is documented in
:mod:`ringbuf._ring`.
"""

from ._errors import (
    NotARing,
    RecordTooLarge,
    RingCorrupted,
    RingError,
    RingPermissionError,
    RingVersionMismatch,
)
from ._ring import (
    DEFAULT_CAPACITY,
    DEFAULT_MAX_RECORD_BYTES,
    LAYOUT_VERSION,
    RING_SUFFIX,
    RecordBatch,
    RingReader,
    RingStats,
    RingWriter,
    default_directory,
    discover,
    ensure_private_directory,
    producer_alive,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_RECORD_BYTES",
    "LAYOUT_VERSION",
    "RING_SUFFIX",
    "NotARing",
    "RecordBatch",
    "RecordTooLarge",
    "RingCorrupted",
    "RingError",
    "RingPermissionError",
    "RingReader",
    "RingStats",
    "RingVersionMismatch",
    "RingWriter",
    "default_directory",
    "discover",
    "ensure_private_directory",
    "producer_alive",
]
