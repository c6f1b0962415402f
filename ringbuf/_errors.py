"""Exceptions raised by :mod:`ringbuf`.

::

    RingError                      base of everything this package raises on purpose
     +-- RecordTooLarge            (also ValueError) payload over max_record_bytes
     +-- NotARing                  the file is not a ring (too short, wrong magic)
     |    +-- RingVersionMismatch  a ring of another layout version
     +-- RingCorrupted             impossible header or frame: refuse, never guess
     +-- RingPermissionError       (also PermissionError) wrong owner or mode

Bad arguments (a capacity that is not a power of two, a payload that is not
bytes) raise the built-in ``ValueError`` / ``TypeError`` with the value and
the rule in the message.
"""

from __future__ import annotations


class RingError(Exception):
    """Base class of the ring's own errors."""


class RecordTooLarge(RingError, ValueError):
    """A payload is larger than the ring's ``max_record_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"record of {size} bytes exceeds max_record_bytes={limit} "
            f"(a record must be at most {limit} bytes)"
        )
        self.size = size
        self.limit = limit


class NotARing(RingError):
    """The file is not a ring file."""


class RingVersionMismatch(NotARing):
    """The file is a ring of a layout version this code does not read."""


class RingCorrupted(RingError):
    """The ring's header or a frame holds values that cannot be right."""


class RingPermissionError(RingError, PermissionError):
    """The ring is owned by another user or writable by group or others."""
