"""Claiming again only the entries still pending for this consumer.

``XCLAIM <me> 0 ids JUSTID`` resets the idle time of pending entries, but it
also takes any of them that another consumer of the group has claimed in the
meantime: the sink's spooler, which claims a lagging worker's entries, puts
them in the spool and only then acknowledges them, or another worker that
took them as a dead worker's. Taken back in that window, an entry would be
delivered by both: a duplicate at the sink, and, when the spool is full and
drops, a record counted as dropped that was delivered after all. So a worker
that keeps its entries claimed does it with one script per shard, atomic in
Redis: of the ids, those whose pending entry's consumer is this one are
claimed again (idle time reset, no delivery counted) and returned; the
others are left to whoever holds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_SCRIPT = """
local group, me = ARGV[1], ARGV[2]
local mine = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == me then
    mine[#mine + 1] = ARGV[i]
  end
end
if #mine > 0 then
  local args = {'XCLAIM', KEYS[1], group, me, 0}
  for _, id in ipairs(mine) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  return redis.call(unpack(args))
end
return mine
"""


def claim_own(r: Any, key: str, group: str, consumer: str, ids: Sequence[Any]) -> list[str]:
    """Claim again those of ``ids`` pending for ``consumer``; their ids (module doc)."""
    if not ids:
        return []
    # made each call: it runs on a failed write, an outage's retries and a refresh of
    # long-held entries (pump/_claims.py), never per record or per ordinary write
    got = r.register_script(_SCRIPT)(keys=[key], args=[group, consumer, *ids])
    return [i.decode() if isinstance(i, bytes) else str(i) for i in got or ()]
