"""One configuration for ``collector.Analytics`` and ``collector-daemon``.

Sources, later ones winning: the defaults below, a YAML file (or a mapping),
environment variables ``COLLECTOR_<KEY>`` (``COLLECTOR_POOL_SIZE=4``; each
value is parsed by its key's type, see :mod:`collector.common.settings`),
then command-line flags. Unknown keys, unknown ``COLLECTOR_*`` variables
(other than the reserved ones, :data:`~collector.common.settings.RESERVED_ENV`)
and bad values raise :class:`ConfigError` naming the source, the key and
the rule. ``configs/collector.yaml`` documents every key.

The top-level keys ``enabled``, ``redis_url``, ``rings_dir``, ``pool_size``,
``batch_size``, ``flush_interval_ms``, ``shutdown_timeout_s`` and
``health_address`` are a fixed interface: tools outside the project use them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

import ringbuf

from .common.redact import redact_url
from .common.service import ServiceSettings
from .common.settings import (
    RESERVED_ENV,
    RESERVED_ENV_PREFIXES,
    ConfigError,
    ConfigWarning,
    apply_env,
    env_table,
    read_yaml_mapping,
    rename_keys,
    validate,
)
from .common.stream import SOCKET_NAME, default_runtime_dir

ENV_PREFIX = "COLLECTOR_"

__all__ = ["CollectorConfig", "ConfigError", "load_config", "redact_url"]


class CollectorConfig(ServiceSettings):
    """Every key of ``configs/collector.yaml``, with its default.

    The Redis, retry, shutdown, health and log keys come from
    :class:`~collector.common.service.ServiceSettings` (shared with the pump).
    """

    # -- shared by the app client and the daemon ---------------------------
    enabled: bool = True
    rings_dir: str = Field(default_factory=lambda: str(ringbuf.default_directory()))

    # -- app client (collector.Analytics) ----------------------------------
    ring_capacity_bytes: int = Field(default=8 * 1024 * 1024, ge=4096)
    max_record_bytes: int = Field(default=ringbuf.DEFAULT_MAX_RECORD_BYTES, ge=1, le=16 << 20)
    ring_checksum: bool = False
    full_policy: Literal["drop", "block"] = "drop"
    block_timeout_ms: float = Field(default=10.0, ge=0, le=60_000)
    encoder: Literal["ormsgpack", "msgpack"] = "ormsgpack"

    # -- daemon: Redis (and the shared redis_* / stream_* keys) ------------
    max_backlog_bytes: int = Field(default=256 << 20, ge=64 << 10)
    max_backlog_entries: int | None = Field(default=None, ge=1)  # deprecated
    # WAIT for this many replicas after each batch; commit the ring only then
    min_replicas_acked: int = Field(default=0, ge=0, le=16)
    replica_ack_timeout_ms: int = Field(default=1000, ge=1, le=60_000)
    runtime_dir: str = Field(default_factory=lambda: str(default_runtime_dir()))
    redis_server: str = "redis-server"

    # -- daemon: flushing (and the shared retry_* / shutdown_timeout_s) ----
    pool_size: int = Field(default=2, ge=1, le=256)
    batch_size: int = Field(default=1000, ge=1, le=1_000_000)
    batch_bytes: int = Field(default=1024 * 1024, ge=1024)
    flush_interval_ms: float = Field(default=200.0, gt=0, le=600_000)
    max_flush_interval_ms: float = Field(default=1000.0, gt=0, le=3_600_000)
    scan_interval_ms: float = Field(default=500.0, gt=0, le=600_000)

    @field_validator("ring_capacity_bytes")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        ringbuf.check_capacity(v)
        return v

    @model_validator(mode="after")
    def _ring_holds_records(self) -> CollectorConfig:
        try:  # the check the app's ring makes when it opens (collector._client)
            ringbuf.check_capacity(self.ring_capacity_bytes, self.max_record_bytes)
        except ValueError as exc:
            raise ValueError(f"ring_capacity_bytes={self.ring_capacity_bytes} and "
                             f"max_record_bytes={self.max_record_bytes}: {exc}") from None
        return self

    # -- derived ------------------------------------------------------------
    @property
    def embedded_redis(self) -> bool:
        """True when no redis_url is set: the daemon runs its own redis-server."""
        return self.redis_url is None

    def effective_redis_url(self) -> str:
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        return f"unix://{Path(self.runtime_dir) / SOCKET_NAME}"


def _unknown_variables(environ: Mapping[str, str], table: Mapping[str, Any]) -> list[str]:
    unknown = [var for var in sorted(environ)
               if var.startswith(ENV_PREFIX) and var not in table and var not in RESERVED_ENV
               and not var.startswith(tuple(RESERVED_ENV_PREFIXES))]
    if not unknown:
        return []
    reserved = ", ".join([*RESERVED_ENV, *(p + "*" for p in RESERVED_ENV_PREFIXES)])
    return [f"environment {var}: unknown variable; the rule: COLLECTOR_<KEY> sets a key of "
            f"configs/collector.yaml ({', '.join(sorted(CollectorConfig.model_fields))}); "
            f"reserved: {reserved}" for var in unknown]


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    sources_out: dict[tuple[str, ...], str] | None = None,
) -> CollectorConfig:
    """Build the configuration from a YAML file or mapping, env and overrides.

    ``sources_out`` receives key path -> the environment variable that set it
    (``collector config show``).
    """
    if isinstance(source, CollectorConfig):
        return source
    label = "config"
    data: dict[str, Any] = {}
    if isinstance(source, Mapping):
        data = dict(source)
        label = "<mapping>"
    elif source is not None:
        label = str(source)
        data = read_yaml_mapping(source)
    rename_keys(CollectorConfig, data, label)
    env = os.environ if environ is None else environ
    table = env_table(CollectorConfig, ENV_PREFIX)
    sources: dict[tuple[str, ...], str] = {} if sources_out is None else sources_out
    problems = _unknown_variables(env, table) + apply_env(data, table, env, sources)
    if problems:
        raise ConfigError("\n".join(problems))
    if overrides:
        for key, value in overrides.items():
            if value is not None:
                data[key] = value
                sources.pop((key,), None)
    config = validate(CollectorConfig, data, label, sources)
    if config.max_backlog_entries is not None:
        warnings.warn(ConfigWarning(label, (
            "max_backlog_entries is deprecated: the budget is max_backlog_bytes (bytes in "
            "Redis, whatever the entries' sizes); until it is removed it still caps the "
            "stream's length too")), stacklevel=2)
    return config
