"""One configuration for ``collector.Analytics`` and ``collector-daemon``.

Sources, later ones winning: the defaults below, a YAML file (or a mapping),
environment variables ``COLLECTOR_<KEY>`` (``COLLECTOR_POOL_SIZE=4``; the
value is parsed as a YAML scalar), then command-line flags. Unknown keys and
bad values raise :class:`ConfigError` naming the source, the key and the
rule. ``configs/collector.yaml`` documents every key.

The top-level keys ``enabled``, ``redis_url``, ``rings_dir``, ``pool_size``,
``batch_size``, ``flush_interval_ms``, ``shutdown_timeout_s`` and
``health_address`` are a fixed interface: tools outside the project use them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

import ringbuf

from .common.redact import redact_url
from .common.settings import ConfigError, read_yaml_mapping
from .common.stream import DEFAULT_STREAM_KEY, default_runtime_dir

ENV_PREFIX = "COLLECTOR_"


class CollectorConfig(BaseModel):
    """Every key of ``configs/collector.yaml``, with its default."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

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

    # -- daemon: Redis -----------------------------------------------------
    redis_url: str | None = None
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_timeout_s: float = Field(default=5.0, gt=0, le=300)
    stream_key: str = Field(default=DEFAULT_STREAM_KEY, min_length=1)
    stream_shards: int = Field(default=1, ge=1, le=1024)
    max_backlog_entries: int = Field(default=100_000, ge=1)
    startup_redis_wait_s: float = Field(default=30.0, ge=0)
    runtime_dir: str = Field(default_factory=lambda: str(default_runtime_dir()))
    redis_server: str = "redis-server"

    # -- daemon: flushing --------------------------------------------------
    pool_size: int = Field(default=2, ge=1, le=256)
    batch_size: int = Field(default=1000, ge=1, le=1_000_000)
    batch_bytes: int = Field(default=1024 * 1024, ge=1024)
    flush_interval_ms: float = Field(default=200.0, gt=0, le=600_000)
    max_flush_interval_ms: float = Field(default=1000.0, gt=0, le=3_600_000)
    scan_interval_ms: float = Field(default=500.0, gt=0, le=600_000)
    retry_initial_ms: float = Field(default=50.0, gt=0)
    retry_max_ms: float = Field(default=5000.0, gt=0)
    shutdown_timeout_s: float = Field(default=10.0, ge=0, le=3600)

    # -- daemon: operations ------------------------------------------------
    health_address: str = "127.0.0.1:7071"
    log_format: Literal["kv", "json"] = "kv"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("ring_capacity_bytes")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        ringbuf.check_capacity(v)
        return v

    @field_validator("redis_url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        scheme = urlsplit(v).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"must be a redis://, rediss:// or unix:// URL, got scheme {scheme!r}"
            )
        return v

    @field_validator("health_address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"must be HOST:PORT (e.g. 127.0.0.1:7071), got {v!r}")
        return v

    # -- derived ------------------------------------------------------------
    @property
    def health_host_port(self) -> tuple[str, int]:
        host, _, port = self.health_address.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def embedded_redis(self) -> bool:
        """True when no redis_url is set: the daemon runs its own redis-server."""
        return self.redis_url is None

    def effective_redis_url(self) -> str:
        if self.redis_url is not None:
            return self.redis_url
        return f"unix://{Path(self.runtime_dir) / 'redis.sock'}"

    def redacted_redis_url(self) -> str:
        return redact_url(self.effective_redis_url())


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = CollectorConfig.model_fields
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in fields:
            continue  # other tools share the prefix (e.g. COLLECTOR_PUMP_*)
        if name in ("redis_password", "redis_username", "redis_url", "rings_dir",
                    "runtime_dir", "stream_key", "health_address", "redis_server"):
            out[name] = raw
        else:
            try:
                out[name] = yaml.safe_load(raw)
            except yaml.YAMLError:
                out[name] = raw
    return out


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = ", ".join(sorted(CollectorConfig.model_fields))
            rule = f"unknown key; known keys: {known}"
        else:
            rule = err["msg"]
            if "input" in err and err["type"] != "missing":
                rule += f" (got {err['input']!r})"
        lines.append(f"{source}: {key}: {rule}")
    return "\n".join(lines)


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> CollectorConfig:
    """Build the configuration from a YAML file or mapping, env and overrides."""
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
    env = _env_overrides(os.environ if environ is None else environ)
    if env:
        data.update(env)
        label += " + environment"
    if overrides:
        data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CollectorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, label)) from None
