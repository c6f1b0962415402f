"""A record's time as Unix seconds, shared by the sinks that place records in time.

Rules (the same for postgres, aggregate, influx and elasticsearch): a number
is Unix seconds, or milliseconds when above 1e11; a string (or bytes) is ISO
8601, naive meaning UTC; a ``datetime`` is taken as it is (naive meaning
UTC); ``bool`` and anything else, NaN, and times outside the years 1 to 9999
give ``None``. Whole seconds stay ``int`` so callers can format them cheaply.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

_MIN_EPOCH, _MAX_EPOCH = -62135596800.0, 253402300799.0  # years 1 to 9999


def epoch_seconds(value: Any) -> int | float | None:
    """Unix seconds of a record's time field, or None when it holds no usable time."""
    try:
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, int | float):
            seconds = value / 1000 if value > 1e11 else value
            if not _MIN_EPOCH <= seconds <= _MAX_EPOCH:  # also false for NaN
                return None
            return seconds
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if isinstance(value, datetime):
            aware = value if value.tzinfo else value.replace(tzinfo=UTC)
            return aware.timestamp()
    except (ValueError, OverflowError, OSError, UnicodeDecodeError):
        pass
    return None


def entry_seconds(entry_id: str) -> float | None:
    """When Redis added a stream entry (``<ms>-<seq>``): a time that redelivery keeps."""
    ms, _, _ = entry_id.partition("-")
    return int(ms) / 1000 if ms.isdigit() else None
