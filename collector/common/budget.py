"""The daemon's backlog budget, published next to the stream so the pump need not be told.

Every daemon writes one field of the hash ``<stream_key>:budget``: its name,
``<host name>:<rings_dir>`` (the same after a restart, so a restarted daemon
overwrites its own field), and as value the JSON object
``{"max_backlog_bytes": N, "stream_shards": S, "at": <unix seconds>}``. It
writes it once Redis answers and again every :data:`PUBLISH_S` (a Redis
restarted without its data, a key deleted by hand), and deletes its field
when it stops cleanly. A field not rewritten for :data:`STALE_S` is a daemon
that is gone and no longer counts.

The pump reads the hash (:func:`read_budgets`) and spools against the
smallest share per shard (``N // S``) of the daemons that write the stream:
the one whose producers are stopped first.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

PUBLISH_S = 10.0
STALE_S = 60.0


def budget_key(stream_key: str) -> str:
    """The hash the daemons publish their budget in."""
    return f"{stream_key}:budget"


def daemon_name(rings_dir: str) -> str:
    """The field one daemon owns: its host and rings directory."""
    return f"{socket.gethostname()}:{rings_dir}"


def publish(client: Any, stream_key: str, name: str, max_backlog_bytes: int,
            stream_shards: int, now: float | None = None) -> None:
    """Write this daemon's field (``HSET``). Raises ``redis.RedisError``."""
    value = json.dumps({"max_backlog_bytes": int(max_backlog_bytes),
                        "stream_shards": int(stream_shards),
                        "at": round(time.time() if now is None else now, 3)})
    client.hset(budget_key(stream_key), name, value)


def withdraw(client: Any, stream_key: str, name: str) -> None:
    """Delete this daemon's field (``HDEL``), at a clean stop. Raises ``redis.RedisError``."""
    client.hdel(budget_key(stream_key), name)


def read_budgets(client: Any, stream_key: str, now: float | None = None) -> dict[str, int]:
    """Each live daemon's share of its ``max_backlog_bytes`` per shard, by its name.

    Fields older than :data:`STALE_S` or not in the format above are left out.
    Raises ``redis.RedisError``."""
    now = time.time() if now is None else now
    out: dict[str, int] = {}
    for field, raw in (client.hgetall(budget_key(stream_key)) or {}).items():
        try:
            value = json.loads(raw)
            total, shards, at = (int(value["max_backlog_bytes"]), int(value["stream_shards"]),
                                 float(value["at"]))
        except (ValueError, TypeError, KeyError):
            continue
        if total <= 0 or shards <= 0 or now - at > STALE_S:
            continue
        name = field.decode("utf-8", "replace") if isinstance(field, bytes) else str(field)
        out[name] = total // shards
    return out
