"""Lock-free single-producer/single-consumer rings in shared memory files.

The public surface: :class:`RingWriter` (the producer), :class:`RingReader`
(the consumer), :func:`discover`, :func:`check_capacity` (the capacity rule
every ring size must follow) and the exception tree of
:mod:`ringbuf._errors`.

Modules::

    _layout     the binary layout, its constants and the capacity rule (the contract)
    _files      the private directory, creating and opening ring files, producer liveness
    _writer     RingWriter and its hot path
    _reader     RingReader, RecordBatch and the frame scanners
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
from ._files import default_directory, ensure_private_directory, producer_alive
from ._layout import (
    DEFAULT_CAPACITY,
    DEFAULT_MAX_RECORD_BYTES,
    LAYOUT_VERSION,
    RING_SUFFIX,
    RingStats,
    check_capacity,
)
from ._reader import RecordBatch, RingReader
from ._writer import RingWriter

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
    "check_capacity",
    "default_directory",
    "discover",
    "ensure_private_directory",
    "is_ring_name",
    "producer_alive",
]
