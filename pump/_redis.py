"""Redis plumbing shared by the supervisor and the workers."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import redis

from collector.common.redisconn import connect_from_config
from collector.common.stream import parse_entry_id

from .config import PumpConfig


def connect(config: PumpConfig, *, block_s: float = 0.0) -> redis.Redis:
    """A client for the pump's Redis, opened by :func:`collector.common.redisconn.connect`.

    Same rules as the daemon: ``redis://``, ``rediss://`` (TLS) or ``unix://``;
    ``redis_username`` / ``redis_password`` (from the environment) win over
    credentials in the URL; redis-py's own command retries are off, so a
    worker never blocks in ten hidden retries while Redis is down: it gets
    the error at once and backs off itself (``Worker._redis_trouble``).
    ``block_s`` is added to the socket timeout so that a blocking
    ``XREADGROUP`` (``read_block_s``) does not time out.
    """
    return connect_from_config(config, timeout_s=config.redis_timeout_s + block_s,
                               connect_timeout_s=config.redis_timeout_s,
                               health_check_interval=30)


def ensure_groups(r: redis.Redis, keys: list[str], group: str) -> None:
    """Create ``group`` on every shard at id 0 (MKSTREAM) unless it exists."""
    for key in keys:
        try:
            r.xgroup_create(key, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def group_info(r: redis.Redis, key: str) -> list[dict[str, Any]]:
    """``XINFO GROUPS`` with str keys; [] when the stream does not exist."""
    try:
        rows = r.xinfo_groups(key)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return []
        raise
    return [{_s(k): v for k, v in row.items()} for row in rows]


def safe_trim_id(r: redis.Redis, key: str, groups: Collection[str]) -> str | None:
    """The smallest id any of ``groups`` on ``key`` may still need, or None to not trim.

    Only the named groups count (the configured sinks' and ``respect_groups``):
    a group nobody configured (left over from an old config, made by hand)
    cannot stall trimming. For each group that is the oldest pending
    (delivered, unacknowledged) id, or else its last-delivered id; every entry
    below the minimum has been acknowledged by every named group. None when
    one of them does not exist on ``key`` (yet): it would start at id 0 and
    needs everything.
    """
    wanted = set(groups)
    if not wanted:
        return None
    best: tuple[int, int] | None = None
    seen: set[str] = set()
    for g in group_info(r, key):
        name = _s(g["name"])
        if name not in wanted:
            continue
        seen.add(name)
        last = _s(g.get("last-delivered-id", "0-0"))
        bound = parse_entry_id(last)
        if int(g.get("pending") or 0) > 0:
            summary = r.xpending(key, name)
            low = summary.get("min") if isinstance(summary, dict) else None
            if low is not None:
                bound = min(bound, parse_entry_id(_s(low)))
        if best is None or bound < best:
            best = bound
    if seen != wanted or best is None or best == (0, 0):
        return None
    return f"{best[0]}-{best[1]}"


def trim_acknowledged(r: redis.Redis, key: str, groups: Collection[str]) -> int:
    """XTRIM MINID below what every one of ``groups`` acknowledged; returns entries removed."""
    minid = safe_trim_id(r, key, groups)
    if minid is None:
        return 0
    return int(r.xtrim(key, minid=minid, approximate=False))


def foreign_groups(r: redis.Redis, key: str, known: Collection[str]
                   ) -> list[tuple[str, int | None, int]]:
    """Groups on ``key`` not in ``known``: (name, lag or None if Redis cannot tell, pending)."""
    out = []
    for g in group_info(r, key):
        name = _s(g["name"])
        if name not in known:
            lag = g.get("lag")
            out.append((name, None if lag is None else int(lag), int(g.get("pending") or 0)))
    return out


def group_lag(r: redis.Redis, key: str, group: str) -> tuple[int, int]:
    """(entries not yet delivered to ``group``, entries pending) on ``key``."""
    for g in group_info(r, key):
        if _s(g["name"]) != group:
            continue
        pending = int(g.get("pending") or 0)
        last = _s(g.get("last-delivered-id") or "0-0")
        info = r.xinfo_stream(key)
        top = _s(info.get("last-generated-id") or "0-0")
        if parse_entry_id(last) >= parse_entry_id(top):
            # Caught up. Redis's own "lag" can be stale after a restart from
            # the append-only file (seen as ~1,800 with nothing left to read).
            return 0, pending
        lag = g.get("lag")
        if lag is None:  # Redis could not tell (after XDEL); count with XRANGE's bound
            lag = int(info.get("length", 0)) if last == "0-0" else len(
                r.xrange(key, min=f"({last}", max="+", count=100_000))
        return int(lag), pending
    return int(r.xlen(key)), 0


def oldest_unacked_ms(r: redis.Redis, key: str, group: str) -> int | None:
    """Unix ms (from its id) of the oldest entry of ``key`` that ``group`` has not
    acknowledged, pending or not yet delivered; None when there is none."""
    last, pending = "0-0", 0
    for g in group_info(r, key):
        if _s(g["name"]) == group:
            last = _s(g.get("last-delivered-id") or "0-0")
            pending = int(g.get("pending") or 0)
            break
    if pending:
        summary = r.xpending(key, group)
        low = summary.get("min") if isinstance(summary, dict) else None
        if low is not None:
            return parse_entry_id(_s(low))[0]
    nxt = r.xrange(key, min=f"({last}" if last != "0-0" else "-", max="+", count=1)
    return parse_entry_id(_s(nxt[0][0]))[0] if nxt else None
