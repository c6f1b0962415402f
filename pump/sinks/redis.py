"""``redis`` sink: forward records to another Redis stream or list.

Modes
-----
``stream`` (default)
    One ``XADD`` entry per record with fields ``id`` (the record id) and
    ``rec`` (the record's msgpack map).
``stream_batch``
    One entry per batch with fields ``v`` (``"1"``), ``n``, ``ids`` and
    ``recs``: msgpack arrays (packed by Redis' Lua ``cmsgpack``) of the ids
    and of the records' msgpack bytes; decode with ``raw=True``.
``list``
    ``RPUSH`` each record's msgpack map: the seed's format, so an unchanged
    iam-pump (or anything reading ``analytics-...`` lists) can consume it.

Records are forwarded as the msgpack bytes the app wrote (``Record.raw``);
only those whose fields the pump changed (omit-detail, iam conversion) are
encoded again from their fields, times as the msgpack timestamp extension.
The sink ``forwards_bytes``: without filters, omit-detail or
``max_record_bytes`` the pump does not decode its records at all, so a record
that is not msgpack is forwarded as the bytes it is instead of dead-lettered.
``max_entries > 0`` trims a stream approximately.

Deduplication: the batch is written by one Lua script that first adds each
id to a sorted set ``{<key>}:seen`` (scored by time, in the same cluster
slot as ``key``) and writes only the ids it had not seen within
``dedupe_window_s`` (default 1 hour). A redelivery inside the window adds
nothing; ``dedupe_window_s: 0`` turns this off (then redelivery duplicates).
The set costs ~100 bytes per record of the window.

Deadline: the client's one connection gets the time left as its socket
timeout before each call. ``ConnectionError``/``TimeoutError``, ``BUSY``,
``LOADING``, ``READONLY``, ``TRYAGAIN``, ``OOM``, ``MASTERDOWN`` are
retryable; other server errors (wrong type of key, ...) are permanent.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from collector.common.redact import SecretUrl

from ._base import Batch, PermanentError, RetryableError, Sink, SinkConfig, Verdict, register

# KEYS: target, seen-set. ARGV: mode, now_s, window_s, max_entries, then id, rec pairs.
_SCRIPT = """
local key, seen = KEYS[1], KEYS[2]
local mode = ARGV[1]
local now, window, maxlen = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if window > 0 then redis.call('ZREMRANGEBYSCORE', seen, '-inf', now - window) end
local ids, recs = {}, {}
for i = 5, #ARGV, 2 do
  local fresh = 1
  if window > 0 then fresh = redis.call('ZADD', seen, 'NX', now, ARGV[i]) end
  if fresh == 1 then
    ids[#ids + 1] = ARGV[i]
    recs[#recs + 1] = ARGV[i + 1]
  end
end
if window > 0 and #ids > 0 then redis.call('EXPIRE', seen, math.ceil(window) + 60) end
if #ids == 0 then return 0 end
local function xadd(fields)
  local cmd = {'XADD', key}
  if maxlen > 0 then
    cmd[#cmd + 1] = 'MAXLEN'; cmd[#cmd + 1] = '~'; cmd[#cmd + 1] = maxlen
  end
  cmd[#cmd + 1] = '*'
  for _, f in ipairs(fields) do cmd[#cmd + 1] = f end
  redis.call(unpack(cmd))
end
if mode == 'list' then
  for i = 1, #recs, 4000 do
    redis.call('RPUSH', key, unpack(recs, i, math.min(i + 3999, #recs)))
  end
elseif mode == 'stream' then
  for i = 1, #ids do xadd({'id', ids[i], 'rec', recs[i]}) end
else
  xadd({'v', '1', 'n', #ids, 'ids', cmsgpack.pack(ids), 'recs', cmsgpack.pack(recs)})
end
return #ids
"""
_RETRYABLE_PREFIXES = ("BUSY", "LOADING", "READONLY", "TRYAGAIN", "OOM", "MASTERDOWN",
                       "CLUSTERDOWN", "NOREPLICAS")


class RedisConfig(SinkConfig):
    """``meta`` of a ``redis`` sink."""

    renamed: ClassVar[Mapping[str, str]] = {"max_len": "max_entries"}

    url: SecretUrl = Field(default=SecretUrl("redis://127.0.0.1:6379/0"),
                           description="redis://, rediss:// or unix:// URL (may hold a password)")
    key: str = Field(default="collector:forward", min_length=1)
    mode: Literal["stream", "stream_batch", "list"] = "stream"
    max_entries: int = Field(default=0, ge=0, description="approximate stream MAXLEN; 0 = none")
    dedupe_window_s: float = Field(default=3600.0, ge=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: SecretUrl) -> SecretUrl:
        if not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url {str(value)!r} must start with redis://, rediss:// or "
                             "unix://")
        return value

    @property
    def seen_key(self) -> str:
        return self.key + ":seen" if "{" in self.key else "{" + self.key + "}:seen"


@register
class RedisSink(Sink):
    name = "redis"
    Config = RedisConfig
    forwards_bytes = True

    def __init__(self, config: RedisConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._client: Any = None
        self._script: Any = None

    @property
    def deduplicates(self) -> bool:  # type: ignore[override]
        """Redelivery within ``dedupe_window_s`` adds nothing; 0 turns that off."""
        return self.cfg.dedupe_window_s > 0

    def _connect(self, deadline: float) -> Any:
        """The client with its one connection, the time left as its socket timeout."""
        left = self.time_left(deadline)
        if self._client is None:
            import redis

            # single_connection_client connects here, already bounded by the deadline
            self._client = redis.Redis.from_url(
                self.cfg.url.get_secret_value(),
                socket_connect_timeout=min(left, self.cfg.connect_timeout_s),
                socket_timeout=left, single_connection_client=True)
            self._script = self._client.register_script(_SCRIPT)
            return self._client
        conn = self._client.connection
        conn.socket_timeout = left
        conn.socket_connect_timeout = min(left, self.cfg.connect_timeout_s)
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            sock.settimeout(left)
        return self._client

    def open(self) -> None:
        self.health_check(deadline=time.monotonic() + self.cfg.connect_timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        self.time_left(deadline)
        if not len(batch):
            return Verdict.OK
        args: list[Any] = [self.cfg.mode, time.time(), self.cfg.dedupe_window_s,
                           self.cfg.max_entries]
        try:
            for rid, raw in zip(batch.ids(), batch.raws(), strict=True):
                args.append(rid)
                args.append(raw)
        except (TypeError, ValueError) as exc:
            raise PermanentError(f"redis sink: a record cannot be msgpack-encoded: {exc}") from exc
        self._call(deadline, "write", lambda: self._script(
            keys=[self.cfg.key, self.cfg.seen_key], args=args, client=self._client))
        return Verdict.OK

    def health_check(self, *, deadline: float) -> None:
        self._call(deadline, "health check", lambda: self._client.ping())

    def _call(self, deadline: float, what: str, fn: Any) -> Any:
        import redis

        try:
            self._connect(deadline)
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.close()  # a timed-out reply may still arrive: never reuse that connection
            raise RetryableError(f"redis sink {what} failed: {type(exc).__name__}: "
                                 f"{exc}") from exc
        except redis.ResponseError as exc:
            if str(exc).startswith(_RETRYABLE_PREFIXES):
                raise RetryableError(f"redis sink {what} failed: {exc}") from exc
            raise PermanentError(f"redis sink {what} failed: {exc}") from exc
        except redis.RedisError as exc:
            self.close()
            raise RetryableError(f"redis sink {what} failed: {type(exc).__name__}: "
                                 f"{exc}") from exc
