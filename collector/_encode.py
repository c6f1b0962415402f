"""Record encoding for ``collector.Analytics``: a fast path and a converting slow path.

The fast path is one C call (``ormsgpack.packb(record)`` or ``msgpack.packb``)
on a plain ``dict`` of ``str`` keys and str/int/float/bool/None/bytes/list/
dict values. Only when it raises does the slow path run: it encodes again
with a ``default`` hook that applies the documented conversions, and if a
value still cannot be encoded it finds the offending field and raises a
``TypeError`` naming it. Records that only hold plain values never pay for
any of this.

Conversions (identical output with either encoder; ormsgpack already does
the first four natively at no extra cost)::

    datetime, date, time      ISO 8601 string, value.isoformat()
                              ("2026-11-26T20:37:05.123456+00:00"; a naive
                              datetime stays naive: no offset is invented)
    uuid.UUID                 its canonical string
    enum.Enum                 its .value (converted again if needed)
    dataclass instance        a map of its fields
    tuple                     array
    set, frozenset            array, sorted when the items are comparable
                              (a set's iteration order differs between
                              processes), else in iteration order
    bytearray, memoryview     bin (like bytes; bytes stay bytes)
    decimal.Decimal           its string, str(value) (no precision lost)
    other Mapping             map

Keys must be ``str`` (the pump decodes with ``msgpack.unpackb`` defaults,
which refuse other key types); with ``encoder: msgpack`` non-str keys are
not checked. Integers must fit in 64 bits (msgpack's range).
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import ormsgpack

Encoder = Callable[[Any], bytes]

ENCODERS = ("ormsgpack", "msgpack")

_CONVERTED = ("datetime, date, time, UUID, Enum, dataclass, tuple, set, frozenset, "
              "bytearray, memoryview, Decimal and non-dict mappings")


def convert(obj: Any) -> Any:
    """The ``default`` hook: one documented conversion, or ``TypeError``."""
    if isinstance(obj, (datetime.date, datetime.time)):  # datetime is a date
        return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot encode a value of type {type(obj).__qualname__}")


def make_encoder(name: str) -> tuple[Encoder, Encoder]:
    """``(fast, slow)`` encoders for ``name`` (``ormsgpack`` or ``msgpack``).

    ``fast(record)`` may raise on anything unusual; ``slow(record)`` converts
    or raises ``TypeError`` naming the field.
    """
    if name == "ormsgpack":
        fast: Encoder = ormsgpack.packb

        def converting(obj: Any) -> bytes:
            return ormsgpack.packb(obj, default=convert)
    elif name == "msgpack":
        # msgpack.packb builds a fresh Packer per call: a shared Packer is not
        # safe once a default hook (Python code) can run in the middle of it.
        fast = msgpack.packb

        def converting(obj: Any) -> bytes:
            return msgpack.packb(obj, default=convert, datetime=False)
    else:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")

    def slow(record: Any) -> bytes:
        if not isinstance(record, Mapping):
            raise TypeError(
                f"record must be a mapping of field names to values, got "
                f"{type(record).__qualname__}"
            )
        try:
            return converting(record if isinstance(record, dict) else dict(record))
        except (TypeError, ValueError, OverflowError) as exc:
            raise _explain(record, converting, exc) from None

    return fast, slow


def _explain(record: Mapping[Any, Any], converting: Encoder, exc: BaseException) -> TypeError:
    """A TypeError naming the first field whose value cannot be encoded."""
    found = _find_bad(record, "", converting)
    if found is None:
        return TypeError(f"record cannot be encoded: {exc}")
    path, value, why = found
    if why == "key":
        where = f"field {path!r} has a key" if path else "has a field name"
        return TypeError(
            f"record {where} {value!r} of type {type(value).__qualname__}: "
            "field names must be str"
        )
    return TypeError(
        f"record field {path!r} has a value of type {type(value).__qualname__} that "
        f"cannot be encoded ({why}); use str, int (64-bit), float, bool, None, bytes, "
        f"list or dict, or one of the converted types: {_CONVERTED}"
    )


def _find_bad(value: Any, path: str, converting: Encoder,
              depth: int = 0) -> tuple[str, Any, str] | None:
    if depth > 64:
        return None
    if isinstance(value, Mapping) or (dataclasses.is_dataclass(value)
                                      and not isinstance(value, type)):
        items = value.items() if isinstance(value, Mapping) else convert(value).items()
        for k, v in items:
            if not isinstance(k, str):
                return path, k, "key"
            sub = f"{path}.{k}" if path else k
            found = _find_bad(v, sub, converting, depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            found = _find_bad(v, f"{path}[{i}]", converting, depth + 1)
            if found is not None:
                return found
        return None
    try:
        converting(value)
    except (TypeError, ValueError, OverflowError) as exc:
        return path, value, str(exc)
    return None
