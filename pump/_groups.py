"""Consumer groups the pump does not own: found, reported, and pruned on request.

Only the groups of the configured sinks and those named in
``respect_groups`` (other pump instances on the same stream) hold trimming
back (``pump/_redis.py``). Any other group on a shard is *foreign*: left
over from an old config, or made by hand (``XGROUP CREATE ... $``). The
supervisor logs each foreign group once (at start, or when it first sees it)
and exports ``collector_pump_foreign_group_lag_entries``;
``collector-pump --prune-groups`` deletes them after a confirmation (or with
``--yes``).
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from collector.common.log import get_logger

from ._redis import foreign_groups
from .config import PumpConfig

log = get_logger(__name__)

#: (stream, group, lag or None when Redis cannot tell, pending)
ForeignRow = tuple[str, str, "int | None", int]


def foreign_rows(r: redis.Redis, config: PumpConfig) -> list[ForeignRow]:
    """Every foreign group on every shard of ``config``'s stream."""
    known = config.trim_groups()
    return [(key, name, lag, pending) for key in config.shard_keys()
            for name, lag, pending in foreign_groups(r, key, known)]


class ForeignReport:
    """Logs each foreign group once per pump run."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def check(self, r: redis.Redis, config: PumpConfig) -> list[ForeignRow]:
        rows = foreign_rows(r, config)
        for key, name, lag, pending in rows:
            if (key, name) in self.seen:
                continue
            self.seen.add((key, name))
            log.warning("A consumer group on the stream belongs to no configured sink; "
                        "trimming does not wait for it.", stream=key, group=name,
                        lag=lag if lag is not None else "unknown", pending=pending,
                        fix="collector-pump --prune-groups deletes it; list it in "
                            "respect_groups if another pump instance reads it")
        return rows


def prune(r: redis.Redis, config: PumpConfig, *, confirm: Callable[[str], bool],
          echo: Callable[[str], None]) -> int:
    """Delete the foreign groups after ``confirm``; returns how many were deleted."""
    rows = foreign_rows(r, config)
    if not rows:
        echo("No foreign consumer groups: every group belongs to a configured sink "
             "or respect_groups.")
        return 0
    for key, name, lag, pending in rows:
        echo(f"{key}  group {name}: lag {lag if lag is not None else 'unknown'}, "
             f"pending {pending}")
    if not confirm(f"Delete these {len(rows)} consumer group(s) (XGROUP DESTROY)?"):
        echo("Nothing deleted.")
        return 0
    deleted = 0
    for key, name, _, _ in rows:
        deleted += int(r.xgroup_destroy(key, name))
        log.info("Deleted a foreign consumer group.", stream=key, group=name)
    echo(f"Deleted {deleted} consumer group(s).")
    return deleted
