"""iam-authz-server's ``AnalyticsRecord`` as iam-pump decodes it.

iam-authz-server encodes each record with ``msgpack.Marshal`` of a Go struct
(``github.com/vmihailenco/msgpack/v5``), which ignores the ``json`` tags: the
keys are the Go field names and ``ExpireAt`` (a ``time.Time``) is the msgpack
timestamp extension. iam-pump decodes them into the same struct and hands
the struct to its pumps, which store it under the names below (its MongoDB
driver lowercases the field names; ``expireAt`` comes from the ``bson`` tag).

:func:`to_iam` does what that decoding does, so every sink stores what
iam-pump stores:

- the eight fields, in the struct's order, each under its stored name;
  keys that are not fields are dropped, a missing field (or nil) gets Go's
  zero value (``0``, ``""``, the zero time: year 1);
- ``TimeStamp`` must be an integer (an :class:`~pump.sinks.Int64`; an
  unsigned one beyond int64 wraps as in Go), the strings must be strings
  (msgpack bin is taken as UTF-8), ``ExpireAt`` a timestamp. Anything else
  fails the way Go's decoder fails the whole record: :class:`NotAnIamRecord`,
  and the pump dead-letters that record alone.
"""

from __future__ import annotations

from typing import Any

from ..sinks._values import Int64, Timestamp

__all__ = ["FIELDS", "GO_NAMES", "STORED_NAMES", "NotAnIamRecord", "is_iam", "to_iam"]

#: (Go field name, the name iam-pump stores it under, kind)
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("TimeStamp", "timestamp", "int64"),
    ("Username", "username", "string"),
    ("Effect", "effect", "string"),
    ("Conclusion", "conclusion", "string"),
    ("Request", "request", "string"),
    ("Policies", "policies", "string"),
    ("Deciders", "deciders", "string"),
    ("ExpireAt", "expireAt", "time"),
)
GO_NAMES = frozenset(go for go, _, _ in FIELDS)
STORED_NAMES = tuple(name for _, name, _ in FIELDS)
ZERO_TIME = Timestamp.from_unix(-62135596800)  # Go's time.Time{}: 0001-01-01 00:00:00 UTC


class NotAnIamRecord(ValueError):
    """A record iam-pump's decoder would refuse (a field of the wrong type)."""


def is_iam(data: dict[Any, Any]) -> bool:
    """Whether a record carries iam's Go field names (``format: auto``)."""
    return not GO_NAMES.isdisjoint(data)


def to_iam(data: dict[Any, Any]) -> dict[str, Any]:
    """The record iam-pump would store for ``data`` (module docstring)."""
    out: dict[str, Any] = {}
    get = data.get
    for go, name, kind in FIELDS:
        value = get(go)
        if kind == "string":
            out[name] = _string(go, value)
        elif kind == "int64":
            out[name] = _int64(go, value)
        else:
            out[name] = _time(go, value)
    return out


def _string(go: str, value: Any) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise NotAnIamRecord(f"iam field {go} must be a string, not {_kind(value)}")


def _int64(go: str, value: Any) -> Int64:
    if value is None:
        return Int64(0)
    if type(value) is int or type(value) is Int64:
        if value >= 1 << 63:  # msgpack uint64: Go's int64 conversion wraps
            value -= 1 << 64
        return Int64(value)
    raise NotAnIamRecord(f"iam field {go} must be an integer, not {_kind(value)}")


def _time(go: str, value: Any) -> Timestamp:
    if isinstance(value, Timestamp):
        return value
    if value is None:
        return ZERO_TIME
    raise NotAnIamRecord(f"iam field {go} must be a msgpack timestamp, not {_kind(value)}")


def _kind(value: Any) -> str:
    return "nil" if value is None else type(value).__name__
