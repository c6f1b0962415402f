"""Records with known ids, and the accounting of what arrived: lost, unexpected, duplicated."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Accounting", "account", "authz_record", "jsonl_lines", "jsonl_records",
           "producer_ids", "record_key"]

K = TypeVar("K", bound=Hashable)

_USERS = ("alice", "bob", "carol", "editor-7")
_COMPACT = (",", ":")


@lru_cache(maxsize=16)
def _decision(variant: int) -> tuple[str, str, str, str, str]:
    """(username, effect, conclusion, request, policies) of one of 12 decisions."""
    user = _USERS[variant % 4]
    allowed = variant % 3 != 0
    policy = "p-articles-read" if allowed else "p-secrets-deny"
    request = json.dumps({
        "subject": f"users:{user}", "action": "read" if allowed else "delete",
        "resource": ("resources:articles:ladon-introduction" if allowed
                     else "resources:secrets:db"),
        "context": {"remoteIP": "192.168.0.5"},
    }, separators=_COMPACT)
    policies = json.dumps([{"id": policy, "effect": "allow" if allowed else "deny"}],
                          separators=_COMPACT)
    conclusion = (f"allowed by policy {policy}" if allowed
                  else f"explicitly denied by policy {policy}")
    return user, "allow" if allowed else "deny", conclusion, request, policies


def authz_record(producer: int, seq: int, *, timestamp: float | None = None) -> dict[str, Any]:
    """Record number ``seq`` of producer ``producer``: an authorization decision.

    The fields are those ``examples/authz_app.py`` records per request
    (``timestamp``, ``username``, ``effect``, ``conclusion``, ``request``,
    ``policies``, ``deciders``, ``request_id``, ``latency_us``,
    ``remote_addr``, ``pid``, ``server``) plus ``producer`` and ``seq``, so
    that whatever a sink holds can be counted by :func:`record_key`. About
    450 bytes of msgpack. The same arguments always give the same record
    (``timestamp`` aside, which defaults to one derived from ``seq``), and
    it survives msgpack and JSON unchanged, so a test can compare what
    arrived with ``authz_record(*record_key(got))``.
    """
    user, effect, conclusion, request, policies = _decision(seq % 12)
    return {
        "timestamp": 1764190000.0 + seq / 1000 if timestamp is None else timestamp,
        "username": user,
        "effect": effect,
        "conclusion": conclusion,
        "request": request,
        "policies": policies,
        "deciders": policies,
        "request_id": f"{producer:04d}-{seq:012d}-4f0c2a7e9a51",
        "latency_us": 30 + seq % 50,
        "remote_addr": "127.0.0.1",
        "pid": 4000 + producer,
        "server": "authz-1",
        "producer": producer,
        "seq": seq,
    }


def record_key(record: Mapping[str, Any]) -> tuple[int, int]:
    """``(producer, seq)`` of a record made by :func:`authz_record`."""
    return int(record["producer"]), int(record["seq"])


def producer_ids(producers: int, count: int, first: int = 0) -> list[tuple[int, int]]:
    """Every ``(producer, seq)`` of producers ``first..first+producers-1`` x ``seq < count``."""
    return [(p, s) for p in range(first, first + producers) for s in range(count)]


@dataclass(frozen=True)
class Accounting:
    """What arrived, against what was sent: counted by id.

    ``lost``: sent, never arrived; ``unexpected``: arrived, never sent;
    ``duplicated``: copies beyond the first (of any id that arrived).
    """

    expected: int
    distinct: int
    lost: int
    duplicated: int
    unexpected: int
    lost_sample: tuple[Any, ...] = ()
    unexpected_sample: tuple[Any, ...] = ()

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated or unexpected."""
        return self.lost == self.duplicated == self.unexpected == 0

    def __str__(self) -> str:
        text = (f"expected={self.expected} distinct={self.distinct} lost={self.lost} "
                f"duplicated={self.duplicated} unexpected={self.unexpected}")
        if self.lost_sample:
            text += f" (lost e.g. {list(self.lost_sample)})"
        if self.unexpected_sample:
            text += f" (unexpected e.g. {list(self.unexpected_sample)})"
        return text


def account(seen: Mapping[K, int] | Iterable[K], expected: Iterable[K],
            sample: int = 5) -> Accounting:
    """Count ``seen`` (a ``Counter`` of ids, or the ids one per arrival) against ``expected``."""
    counts: Mapping[K, int] = seen if isinstance(seen, Mapping) else Counter(seen)
    want = set(expected)
    lost = [k for k in want if counts.get(k, 0) == 0]
    unexpected = [k for k, c in counts.items() if c > 0 and k not in want]
    return Accounting(
        expected=len(want),
        distinct=sum(1 for c in counts.values() if c > 0),
        lost=len(lost),
        duplicated=sum(c - 1 for c in counts.values() if c > 1),
        unexpected=len(unexpected),
        lost_sample=tuple(_sorted(lost)[:sample]),
        unexpected_sample=tuple(unexpected[:sample]),
    )


def _sorted(keys: list[Any]) -> list[Any]:
    try:
        return sorted(keys)
    except TypeError:  # ids of mixed types
        return keys


def _files(path: Path) -> list[Path]:
    """``path``, or the files in it when it is a directory (a rotating file sink's)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return [path] if path.exists() else []


def jsonl_records(path: Path, on_error: Callable[[bytes], Any] | None = None
                  ) -> Iterator[dict[str, Any]]:
    """Every record of a JSON Lines file, or of every file in a directory, in order.

    A line that is not a JSON object raises ``ValueError``, or is handed to
    ``on_error`` (and skipped) when that is given.
    """
    for f in _files(path):
        with open(f, "rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError(f"not a JSON object: {line[:80]!r}")
                except ValueError:
                    if on_error is None:
                        raise
                    on_error(line)
                    continue
                yield rec


def jsonl_lines(path: Path) -> int:
    """Lines in a JSON Lines file (or the files of a directory), without parsing them."""
    total = 0
    for f in _files(path):
        with open(f, "rb") as fh:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    return total
