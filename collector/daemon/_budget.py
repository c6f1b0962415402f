"""A flusher's view of each stream shard's size against its budget in bytes.

Each shard may hold ``max_backlog_bytes / stream_shards`` bytes. The flusher
knows the size of every entry it writes and gets the shard's length back
with each ``XADD`` (``_xadd.py``), so its estimate is the length times the
mean size of the entries it wrote (an exponential average). It checks the
estimate against what Redis reports, ``MEMORY USAGE <shard>`` (sampled, a
few nodes of the stream), at most every ``REPORT_S`` while the estimate is
over a quarter of the budget, and takes the larger of the two. At or over
the budget the flusher leaves the data in the rings and looks again every
``BACKLOG_RECHECK_S``. An ACL user without ``MEMORY`` is told once in the
log and the estimate alone decides.

``max_backlog_entries`` (deprecated) still caps the length too when it is set.

:class:`BudgetPublisher` writes the budget next to the stream for the pump
(:mod:`collector.common.budget`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from collector.common.budget import PUBLISH_S, budget_key, daemon_name, publish, withdraw
from collector.common.log import get_logger

_log = get_logger(__name__)

BACKLOG_RECHECK_S = 0.1
REPORT_S = 1.0
#: What Redis spends on a stream entry besides its fields' bytes (ids, listpack
#: headers, the radix tree), a first guess until MEMORY USAGE says otherwise.
ENTRY_OVERHEAD = 64


def entry_bytes(fields: dict[str, bytes] | dict[str, bytes | list[bytes]]) -> int:
    """The bytes one entry puts into a stream: its field names and values (a list value:
    its parts, ``_xadd``), and overhead."""
    return ENTRY_OVERHEAD + sum(len(k) + (sum(map(len, v)) if isinstance(v, list) else len(v))
                                for k, v in fields.items())


@dataclass(slots=True)
class _Shard:
    length: int = -1  # XLEN as last seen; -1: not yet
    checked_at: float = 0.0
    per_entry: float = 0.0  # MEMORY USAGE / XLEN as Redis last reported it
    reported_at: float = -math.inf
    pushed_back: bool = False


class StreamBudget:
    """Whether a shard is over its byte budget (module docstring)."""

    def __init__(self, client: Any, max_bytes: int, shards: int,
                 max_entries: int | None, on_error: Callable[[BaseException, str], None],
                 on_ok: Callable[[], None]) -> None:
        self.client = client
        self.max_bytes = max(1, max_bytes // shards)
        self.max_entries = max_entries
        self.on_error = on_error
        self.on_ok = on_ok
        self.mean = 0.0  # mean entry bytes this flusher wrote
        self.memory_usage = True  # False once Redis refused MEMORY USAGE
        self.shards: dict[str, _Shard] = {}

    def wrote(self, key: str, length: int, nbytes: int, now: float) -> None:
        """An entry of ``nbytes`` went to ``key``, which now holds ``length`` entries."""
        self.mean = float(nbytes) if self.mean == 0.0 else 0.9 * self.mean + 0.1 * nbytes
        s = self.shards.setdefault(key, _Shard())
        s.length, s.checked_at = length, now

    def size(self, key: str) -> int:
        """Bytes in ``key`` as this flusher sees it: its length x the larger of the mean
        entry written and Redis's own bytes per entry."""
        s = self.shards.get(key)
        if s is None or s.length <= 0:
            return 0
        return int(s.length * max(self.mean, s.per_entry))

    def over(self, key: str, now: float) -> bool:
        """True if ``key`` is at or over its budget: hold the batch (counted by the caller)."""
        s = self.shards.setdefault(key, _Shard())
        need_length = s.length < 0 or (s.pushed_back and now - s.checked_at >= BACKLOG_RECHECK_S)
        if s.pushed_back and not need_length:
            return True
        need_report = self._wants_report(key, s, now)
        if need_length or need_report:
            try:
                if need_length:
                    s.length = int(self.client.xlen(key))
                    s.checked_at = now
                if need_report:
                    self._report(key, s, now)
            except (redis.RedisError, OSError) as exc:
                self.on_error(exc, "XLEN")
                return True
            self.on_ok()
        over = self.size(key) >= self.max_bytes or (
            self.max_entries is not None and s.length >= self.max_entries)
        return self._transition(key, s, over)

    def _wants_report(self, key: str, s: _Shard, now: float) -> bool:
        if not self.memory_usage or now - s.reported_at < REPORT_S or s.length <= 0:
            return False
        return s.pushed_back or self.size(key) >= self.max_bytes / 4

    def _report(self, key: str, s: _Shard, now: float) -> None:
        s.reported_at = now
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.memory_usage(key)
            pipe.xlen(key)
            usage, xlen = pipe.execute()
            reported, length = int(usage or 0), int(xlen)
        except redis.ResponseError as exc:
            if "NOPERM" not in str(exc).upper() and "unknown command" not in str(exc).lower():
                raise
            self.memory_usage = False
            _log.warning("Redis refuses MEMORY USAGE; the stream's size is estimated from "
                         "the entries written.", shard=key, error=str(exc))
            return
        s.length, s.checked_at = length, now
        s.per_entry = reported / length if length else 0.0

    def _transition(self, key: str, s: _Shard, over: bool) -> bool:
        if over and not s.pushed_back:
            s.pushed_back = True
            _log.warning("Stream is over its backlog budget; keeping records in the rings.",
                         shard=key, length=s.length, bytes=self.size(key),
                         max_backlog_bytes_per_shard=self.max_bytes,
                         max_backlog_entries=self.max_entries)
        elif not over and s.pushed_back:
            s.pushed_back = False
            _log.info("Stream is below its backlog budget again.", shard=key,
                      length=s.length, bytes=self.size(key))
        return over


class BudgetPublisher:
    """The supervisor's copy of its budget in Redis, for the pump
    (:mod:`collector.common.budget`): written once Redis answers, again every
    ``PUBLISH_S``, deleted at a clean stop. A Redis that refuses it (an ACL user
    without ``HSET`` on ``<stream_key>:budget``) is told once in the log: the pump
    then needs ``max_backlog_bytes`` set by hand."""

    def __init__(self, client: Any, stream_key: str, rings_dir: str, max_bytes: int,
                 shards: int) -> None:
        self.client = client
        self.stream_key = stream_key
        self.name = daemon_name(rings_dir)
        self.max_bytes, self.shards = max_bytes, shards
        self.next_at = 0.0
        self.published = False
        self.refused = False

    def tick(self, now: float) -> None:
        if now < self.next_at:
            return
        try:
            publish(self.client, self.stream_key, self.name, self.max_bytes, self.shards)
        except redis.ResponseError as exc:
            self.next_at = now + PUBLISH_S
            if not self.refused:
                self.refused = True
                _log.warning("Redis refuses the daemon's budget for the pump; set the pump's "
                             "max_backlog_bytes to this daemon's by hand.",
                             key=budget_key(self.stream_key), error=str(exc))
            return
        except (redis.RedisError, OSError):
            self.next_at = now + 1.0  # Redis is away: said elsewhere; try again soon
            return
        self.next_at = now + PUBLISH_S
        if not self.published:
            self.published = True
            _log.info("Published the backlog budget for the pump.",
                      key=budget_key(self.stream_key), max_backlog_bytes=self.max_bytes,
                      stream_shards=self.shards)

    def withdraw(self) -> None:
        if not self.published:
            return
        try:
            withdraw(self.client, self.stream_key, self.name)
        except (redis.RedisError, OSError):
            pass  # stale in STALE_S anyway
