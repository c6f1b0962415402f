"""Values a record can hold beyond what JSON has, and their codecs.

:class:`Timestamp`
    The msgpack timestamp extension (type -1) decoded: a timezone-aware UTC
    ``datetime`` that also keeps the nanoseconds the extension carries
    (``nanosecond``, 0-999 beyond ``microsecond``). Go's ``time.Time`` is
    encoded this way by ``github.com/vmihailenco/msgpack/v5`` (iam-authz-server's
    ``ExpireAt``): the 32-bit form for whole seconds that fit, the 64-bit form
    for times up to 2514, the 96-bit form otherwise, including negative
    seconds (Go's zero time is year 1). Sinks store it as their target's own
    time type; as text it is ISO 8601 in UTC with ``Z`` (:meth:`Timestamp.iso`).
:class:`Int64`
    An ``int`` that a target with sized integers stores in 64 bits (Go's
    ``int64``: iam's ``TimeStamp``, which iam-pump's MongoDB driver writes as
    a BSON int64 whatever its size).

Decoding (:func:`unpack_record`): ormsgpack first (Rust), msgpack for what
it refuses (maps with non-string keys); an extension of any other type, a
timestamp of a bad length or outside the years 1-9999 raise
:class:`UndecodableRecord` naming it. Encoding back (:func:`pack_record`):
timestamps become the extension again, in the smallest form that holds them.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgpack
import ormsgpack

__all__ = ["Int64", "Timestamp", "UndecodableRecord", "json_default", "pack_record",
           "time_text", "unpack_record", "unpack_records"]

TIMESTAMP_EXT = -1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TS96 = struct.Struct(">Iq")


class UndecodableRecord(ValueError):
    """A record's bytes that are not a msgpack value the pump can hold."""


class Int64(int):
    """An integer to be stored as 64 bits where the target has sizes (module docstring)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return int.__repr__(self)

    __str__ = __repr__


class Timestamp(datetime):
    """A UTC ``datetime`` with nanoseconds: the msgpack timestamp extension."""

    __slots__ = ("nanosecond",)
    nanosecond: int  # 0-999: the nanoseconds beyond ``microsecond``

    @classmethod
    def from_unix(cls, seconds: int, nanoseconds: int = 0) -> Timestamp:
        """The time ``seconds`` + ``nanoseconds`` after the Unix epoch (seconds may be < 0)."""
        if not 0 <= nanoseconds < 1_000_000_000:
            raise ValueError(f"nanoseconds {nanoseconds} out of range")
        try:
            d = _EPOCH + timedelta(seconds=seconds, microseconds=nanoseconds // 1000)
        except OverflowError:
            raise ValueError(f"{seconds} s from 1970 is outside the years 1 to 9999") from None
        t = cls(d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, tzinfo=UTC)
        t.nanosecond = nanoseconds % 1000
        return t

    @classmethod
    def from_datetime(cls, value: datetime) -> Timestamp:
        """``value`` in UTC (a naive one is taken as UTC)."""
        if isinstance(value, Timestamp):
            return value
        aware = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        seconds, nanoseconds = _unix(aware, 0)
        return cls.from_unix(seconds, nanoseconds)

    def unix(self) -> tuple[int, int]:
        """(seconds since 1970, possibly negative; nanoseconds 0-999,999,999)."""
        return _unix(self, self.nanosecond)

    def nanoseconds(self) -> int:
        """The fraction of the second in nanoseconds."""
        return self.microsecond * 1000 + self.nanosecond

    def iso(self) -> str:
        """ISO 8601 in UTC with ``Z``; the fraction has as many digits as it needs (up to 9)."""
        return f"{self._date()}T{self._clock()}Z"

    def go_string(self) -> str:
        """What Go's ``time.Time.String()`` prints for this time in UTC."""
        return f"{self._date()} {self._clock()} +0000 UTC"

    def _date(self) -> str:
        return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"

    def _clock(self) -> str:
        return (f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}"
                + _fraction(self.nanoseconds()))

    def to_ext(self) -> bytes:
        """The extension's payload, in the smallest of its three forms."""
        seconds, nanoseconds = self.unix()
        if seconds >> 34 == 0:
            data = nanoseconds << 34 | seconds
            if data >> 32 == 0:
                return _U32.pack(data)
            return _U64.pack(data)
        return _TS96.pack(nanoseconds, seconds)

    def __repr__(self) -> str:
        return f"Timestamp({self.iso()!r})"

    def __reduce__(self) -> Any:
        return (Timestamp.from_unix, self.unix())


def _unix(value: datetime, extra_ns: int) -> tuple[int, int]:
    delta = value - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    return seconds, delta.microseconds * 1000 + extra_ns


def _fraction(ns: int) -> str:
    return "" if ns == 0 else "." + f"{ns:09d}".rstrip("0")


def timestamp_from_ext(data: bytes) -> Timestamp:
    """A timestamp extension's payload (4, 8 or 12 bytes) as a :class:`Timestamp`."""
    n = len(data)
    if n == 4:
        return Timestamp.from_unix(_U32.unpack(data)[0])
    if n == 8:
        value = _U64.unpack(data)[0]
        return Timestamp.from_unix(value & 0x3FFFFFFFF, value >> 34)
    if n == 12:
        nanoseconds, seconds = _TS96.unpack(data)
        return Timestamp.from_unix(seconds, nanoseconds)
    raise ValueError(f"a msgpack timestamp has 4, 8 or 12 bytes, not {n}")


class _ExtHook:
    """ormsgpack's ``ext_hook``, keeping the reason (ormsgpack replaces the message)."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: str | None = None

    def __call__(self, code: int, data: bytes) -> Any:
        if code != TIMESTAMP_EXT:
            self.error = (f"msgpack extension type {code} is not supported (only {TIMESTAMP_EXT}, "
                          "the timestamp)")
            raise ValueError(self.error)
        try:
            return timestamp_from_ext(data)
        except ValueError as exc:
            self.error = f"bad msgpack timestamp: {exc}"
            raise


_fast = ormsgpack.unpackb
_slow = msgpack.unpackb


def unpack_record(raw: bytes) -> Any:
    """A record's msgpack as Python values (module docstring); UndecodableRecord if not."""
    hook = _ExtHook()
    try:
        return _fast(raw, ext_hook=hook)
    except Exception:
        if hook.error is not None:
            raise UndecodableRecord(hook.error) from None
    try:
        value = _slow(raw, raw=False, ext_hook=_slow_ext, timestamp=0)
    except UndecodableRecord:
        raise
    except Exception as exc:
        raise UndecodableRecord(f"record does not decode: {exc}") from None
    return _with_timestamps(value)


def unpack_records(raws: list[bytes]) -> list[Any] | None:
    """An entry's records decoded in one pass (one ormsgpack call each, one hook);
    None when any of them needs :func:`unpack_record`'s care."""
    hook = _ExtHook()
    fast = _fast
    try:
        return [fast(raw, ext_hook=hook) for raw in raws]
    except Exception:
        return None


def _slow_ext(code: int, data: bytes) -> Any:
    hook = _ExtHook()
    try:
        return hook(code, data)
    except ValueError:
        raise UndecodableRecord(hook.error) from None


def _with_timestamps(value: Any) -> Any:
    """msgpack's own Timestamp objects (its slow path) as :class:`Timestamp`."""
    if isinstance(value, msgpack.Timestamp):
        try:
            return Timestamp.from_unix(value.seconds, value.nanoseconds)
        except ValueError as exc:
            raise UndecodableRecord(f"bad msgpack timestamp: {exc}") from None
    if isinstance(value, dict):
        return {k: _with_timestamps(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_timestamps(v) for v in value]
    return value


def _pack_default(value: Any) -> Any:
    if isinstance(value, datetime):
        seconds, nanoseconds = Timestamp.from_datetime(value).unix()
        return msgpack.Timestamp(seconds, nanoseconds)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot be msgpack-encoded")


def pack_record(data: Any) -> bytes:
    """Fields back to msgpack: timestamps as the extension, like the producer wrote them."""
    return msgpack.packb(data, use_bin_type=True, default=_pack_default)


def time_text(value: datetime) -> str:
    """A time as text: ISO 8601 in UTC with ``Z`` (naive taken as UTC)."""
    return Timestamp.from_datetime(value).iso()


def json_default(value: Any) -> Any:
    """JSON for values JSON lacks: times as ISO 8601 with ``Z``, bytes as UTF-8 text,
    sets and tuples as lists, Decimal as text (``orjson.dumps(default=...)``)."""
    if isinstance(value, datetime):
        return Timestamp.from_datetime(value).iso()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
