"""Configuration of ``collector-pump`` (``configs/pump.yaml`` documents every key).

Sources, later ones winning: the defaults below, a YAML file (or a mapping),
then environment variables. Unknown keys and bad values raise
:class:`ConfigError`, one line per problem, naming the source (file or
environment variable), the key path and the rule.

Environment overrides (values are parsed as YAML scalars or flow lists, so
``5``, ``true`` and ``[a, b]`` work):

- ``COLLECTOR_PUMP_<KEY>`` sets a top-level key, e.g.
  ``COLLECTOR_PUMP_READ_COUNT=100`` or ``COLLECTOR_PUMP_REDIS_URL=redis://h:6379/0``.
- ``COLLECTOR_PUMP_REDIS_PASSWORD`` / ``COLLECTOR_PUMP_REDIS_USERNAME`` give
  Redis credentials without putting them in the URL (never logged).
- ``COLLECTOR_PUMP_<SINK>_<KEY>`` sets a common key of the sink named
  ``<sink>`` in ``pumps:`` (``type``, ``timeout``, ``omit_detailed_recording``,
  ``max_record_size``, ``workers``); ``<SINK>`` is the sink name upper-cased
  with ``-`` and ``.`` as ``_``, e.g. ``COLLECTOR_PUMP_FILE_WORKERS=2``.
- ``COLLECTOR_PUMP_<SINK>_META_<KEY>`` sets one key of that sink's ``meta``
  (lower-cased), e.g. ``COLLECTOR_PUMP_POSTGRES_META_DSN=...``.
- Top-level keys are matched first. ``COLLECTOR_PUMP_CONFIG`` is the CLI's
  config path. Any other ``COLLECTOR_PUMP_*`` variable is an error, so a typo
  does not go unnoticed.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from collector.common.redact import redact_url
from collector.common.settings import ConfigError, read_yaml_mapping
from collector.common.stream import DEFAULT_STREAM_KEY, default_redis_url, shard_keys

ENV_PREFIX = "COLLECTOR_PUMP_"
SINK_COMMON_KEYS = ("type", "timeout", "omit_detailed_recording", "max_record_size", "workers")
_ENV_IGNORED = {"CONFIG"}
_ENV_CREDENTIALS = {"REDIS_PASSWORD": "password", "REDIS_USERNAME": "username"}

Scalar = str | int | float | bool | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Filters(_Model):
    """Which records a sink gets. All given conditions must hold.

    ``include``: every listed field must have one of the listed values.
    ``exclude``: a record whose field has one of the listed values is dropped.
    ``usernames`` / ``skip_usernames``: the seed's shorthand for including /
    excluding by the ``username`` field.
    """

    include: dict[str, list[Scalar]] = Field(default_factory=dict)
    exclude: dict[str, list[Scalar]] = Field(default_factory=dict)
    usernames: list[str] = Field(default_factory=list)
    skip_usernames: list[str] = Field(default_factory=list)

    def effective(self) -> tuple[dict[str, frozenset[Any]], dict[str, frozenset[Any]]]:
        inc = {k: frozenset(v) for k, v in self.include.items()}
        exc = {k: frozenset(v) for k, v in self.exclude.items()}
        if self.usernames:
            names = frozenset(self.usernames)
            inc["username"] = inc["username"] & names if "username" in inc else names
        if self.skip_usernames:
            exc["username"] = exc.get("username", frozenset()) | frozenset(self.skip_usernames)
        return inc, exc

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude or self.usernames or self.skip_usernames)


class PumpSpec(_Model):
    """One sink under ``pumps:``."""

    type: str | None = None
    filters: Filters = Field(default_factory=Filters)
    timeout: float = Field(default=30.0, gt=0, le=3600)  # seconds per write attempt
    omit_detailed_recording: bool | None = None
    max_record_size: int | None = Field(default=None, ge=64)  # bytes of msgpack
    workers: int = Field(default=1, ge=1, le=64)
    meta: dict[str, Any] = Field(default_factory=dict)


class SourceConfig(_Model):
    type: Literal["stream", "list"] = "stream"
    list_key: str = Field(default="analytics-iam-system-analytics", min_length=1)
    list_batch: int = Field(default=1000, ge=1, le=100_000)  # records moved per script call


class PumpConfig(_Model):
    """Every key of ``configs/pump.yaml`` with its default."""

    redis_url: str | None = None
    redis_timeout_s: float = Field(default=5.0, gt=0, le=300)
    stream_key: str = Field(default=DEFAULT_STREAM_KEY, min_length=1)
    stream_shards: int = Field(default=1, ge=1, le=1024)
    purge_delay: float = Field(default=1.0, gt=0, le=60)  # seconds a read blocks
    read_count: int = Field(default=50, ge=1, le=10_000)  # entries per XREADGROUP
    health_check_address: str = "127.0.0.1:7070"
    health_check_path: str = "healthz"
    omit_detailed_recording: bool = False
    detail_fields: list[str] = Field(default_factory=lambda: ["policies", "deciders"])
    shutdown_timeout_s: float = Field(default=10.0, ge=0, le=3600)
    max_deliveries: int = Field(default=5, ge=1, le=1000)
    claim_idle_ms: int = Field(default=120_000, ge=100)
    initial_backoff_ms: float = Field(default=100.0, gt=0)
    max_backoff_ms: float = Field(default=5000.0, gt=0)
    batch_deadline_s: float = Field(default=60.0, gt=0, le=3600)
    stuck_write_grace_s: float = Field(default=30.0, ge=1)
    max_lag_entries: int = Field(default=10_000, ge=1)
    trim: bool = True
    trim_interval_s: float = Field(default=10.0, gt=0)
    source: SourceConfig = Field(default_factory=SourceConfig)
    plugins: list[str] = Field(default_factory=list)
    log_format: Literal["kv", "json"] = "kv"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    pumps: dict[str, PumpSpec] = Field(min_length=1)

    # Credentials from the environment only (never in the file, never logged).
    redis_username: str | None = Field(default=None, exclude=False, repr=False)
    redis_password: str | None = Field(default=None, repr=False)

    @field_validator("redis_url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"must be a redis://, rediss:// or unix:// URL, got scheme {scheme!r}")
        return v

    @field_validator("health_check_address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"must be HOST:PORT (e.g. 127.0.0.1:7070), got {v!r}")
        return v

    @field_validator("health_check_path")
    @classmethod
    def _path(cls, v: str) -> str:
        v = v.strip("/")
        if not v or v in ("readyz", "metrics"):
            raise ValueError("must be a non-empty path other than readyz and metrics")
        return v

    @field_validator("pumps")
    @classmethod
    def _names(cls, v: dict[str, PumpSpec]) -> dict[str, PumpSpec]:
        for name in v:
            if not name or any(c in name for c in " :{}\n\t"):
                raise ValueError(
                    f"sink name {name!r} must be non-empty without spaces, ':' or braces")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PumpConfig:
        if self.max_backoff_ms < self.initial_backoff_ms:
            raise ValueError(
                f"max_backoff_ms ({self.max_backoff_ms}) must be >= initial_backoff_ms "
                f"({self.initial_backoff_ms})")
        if self.claim_idle_ms <= self.batch_deadline_s * 1000:
            raise ValueError(
                f"claim_idle_ms ({self.claim_idle_ms}) must be greater than batch_deadline_s "
                f"in ms ({self.batch_deadline_s * 1000:g}), or live workers' batches get "
                "claimed by others")
        return self

    # -- derived --------------------------------------------------------------
    def effective_redis_url(self) -> str:
        return self.redis_url if self.redis_url is not None else default_redis_url()

    def redacted_redis_url(self) -> str:
        return redact_url(self.effective_redis_url())

    def shard_keys(self) -> list[str]:
        return shard_keys(self.stream_key, self.stream_shards)

    @property
    def health_host_port(self) -> tuple[str, int]:
        host, _, port = self.health_check_address.rpartition(":")
        return host.strip("[]"), int(port)

    def sink_type(self, name: str) -> str:
        return self.pumps[name].type or name

    def omit_for(self, name: str) -> bool:
        spec = self.pumps[name]
        if spec.omit_detailed_recording is None:
            return self.omit_detailed_recording
        return spec.omit_detailed_recording


def dead_letter_key(shard_key: str, sink: str) -> str:
    """The dead-letter stream of ``sink`` for entries of ``shard_key``."""
    return f"{shard_key}:dead:{sink}"


def import_plugins(modules: list[str]) -> None:
    """Import third-party sink modules (each calls ``pump.sinks.register``)."""
    for mod in modules:
        importlib.import_module(mod)


def _env_name(sink: str) -> str:
    return sink.upper().replace("-", "_").replace(".", "_")


def _parse_env(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


_STRING_KEYS = {"redis_url", "stream_key", "health_check_address", "health_check_path"}


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Merge env overrides into ``data``; return key path -> variable name."""
    sources: dict[tuple[str, ...], str] = {}
    top = set(PumpConfig.model_fields) - {"redis_username", "redis_password", "pumps"}
    pumps = data.get("pumps")
    sink_names = {_env_name(n): n for n in pumps} if isinstance(pumps, Mapping) else {}
    problems: list[str] = []
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):]
        raw = environ[var]
        if rest in _ENV_IGNORED:
            continue
        if rest in _ENV_CREDENTIALS:
            key = f"redis_{_ENV_CREDENTIALS[rest]}"
            data[key] = raw
            sources[(key,)] = var
            continue
        if rest.lower() in top:
            key = rest.lower()
            data[key] = raw if key in _STRING_KEYS else _parse_env(raw)
            sources[(key,)] = var
            continue
        matched = False
        for env_sink, sink in sorted(sink_names.items(), key=lambda kv: -len(kv[0])):
            if not rest.startswith(env_sink + "_"):
                continue
            sub = rest[len(env_sink) + 1:]
            spec = dict(data["pumps"].get(sink) or {})
            if sub.startswith("META_") and len(sub) > 5:
                mkey = sub[5:].lower()
                meta = dict(spec.get("meta") or {})
                meta[mkey] = _parse_env(raw)
                spec["meta"] = meta
                sources[("pumps", sink, "meta", mkey)] = var
            elif sub.lower() in SINK_COMMON_KEYS:
                key = sub.lower()
                spec[key] = raw if key == "type" else _parse_env(raw)
                sources[("pumps", sink, key)] = var
            else:
                break
            pumps_copy = dict(data["pumps"])
            pumps_copy[sink] = spec
            data["pumps"] = pumps_copy
            matched = True
            break
        if not matched:
            problems.append(
                f"environment {var}: unknown variable; the rule: COLLECTOR_PUMP_<KEY> for a "
                f"top-level key ({', '.join(sorted(top))}), COLLECTOR_PUMP_<SINK>_<KEY> for "
                f"{', '.join(SINK_COMMON_KEYS)} of a configured sink "
                f"({', '.join(sorted(sink_names)) or 'none configured'}), "
                "COLLECTOR_PUMP_<SINK>_META_<KEY>, COLLECTOR_PUMP_REDIS_PASSWORD/_USERNAME")
    if problems:
        raise ConfigError("\n".join(problems))
    return sources


def _loc_str(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] | None = PumpConfig
    for i, part in enumerate(loc[:-1]):
        if model is None:
            return []
        if model is PumpConfig and part == "pumps":
            model = PumpSpec if i + 2 < len(loc) else None
            continue
        if model is PumpSpec and part in ("filters",):
            model = Filters
            continue
        if model is PumpConfig and part == "source":
            model = SourceConfig
            continue
        if model is PumpSpec and isinstance(part, str) and part not in PumpSpec.model_fields:
            continue  # the sink name level
    if model is None:
        return []
    return sorted(k for k in model.model_fields if k not in ("redis_username", "redis_password"))


def _format(exc: ValidationError, label: str, sources: Mapping[tuple[str, ...], str],
            prefix: tuple[Any, ...] = ()) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        src = sources.get(tuple(str(p) for p in loc))
        where = f"environment {src} ({_loc_str(loc)})" if src else f"{label}: {_loc_str(loc)}"
        if err["type"] == "value_error" and not err["loc"]:
            rule = err["msg"].removeprefix("Value error, ")
            lines.append(f"{label}: {_loc_str(loc)}: {rule}" if loc else f"{label}: {rule}")
            continue
        if err["type"] == "extra_forbidden":
            known = _known_keys(loc)
            rule = "unknown key" + (f"; known keys: {', '.join(known)}" if known else "")
        else:
            rule = err["msg"]
            if err["type"] != "missing" and "input" in err and loc and not isinstance(
                    err["input"], Mapping):
                shown = err["input"]
                if isinstance(shown, str) and "redis_password" in loc:
                    shown = "***"
                elif isinstance(shown, str) and "redis_url" in loc:
                    shown = redact_url(shown)
                rule += f" (got {shown!r})"
        lines.append(f"{where}: {rule}")
    return lines


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | PumpConfig | None,
    *,
    environ: Mapping[str, str] | None = None,
) -> PumpConfig:
    """Load and validate the pump configuration, including every sink's ``meta``."""
    if isinstance(source, PumpConfig):
        return source
    label = "<mapping>"
    if source is None:
        data: dict[str, Any] = {}
        label = "<defaults>"
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        label = str(source)
        data = read_yaml_mapping(source)
    pumps = data.get("pumps")
    if isinstance(pumps, Mapping):
        data["pumps"] = {k: (dict(v) if isinstance(v, Mapping) else v) if v is not None else {}
                         for k, v in pumps.items()}
    sources = _apply_env(data, os.environ if environ is None else environ)
    for key in ("redis_username", "redis_password"):
        if key in data and (key,) not in sources:
            raise ConfigError(
                f"{label}: {key}: unknown key; credentials come only from the environment "
                f"(COLLECTOR_PUMP_{key.upper()}) or the redis_url")
    try:
        config = PumpConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_format(exc, label, sources))) from None

    # Sink types and their own typed meta.
    try:
        import_plugins(config.plugins)
    except ImportError as exc:
        raise ConfigError(f"{label}: plugins: cannot import {exc.name!r}: {exc}") from None
    from .sinks import registry

    known = registry()
    lines: list[str] = []
    for name, spec in config.pumps.items():
        type_name = spec.type or name
        cls = known.get(type_name)
        if cls is None:
            where = sources.get(("pumps", name, "type"))
            where_s = f"environment {where}" if where else f"{label}: pumps.{name}.type"
            lines.append(f"{where_s}: unknown sink type {type_name!r}; known types: "
                         f"{', '.join(sorted(known))}")
            continue
        try:
            cls.Config.model_validate(dict(spec.meta))
        except ValidationError as exc:
            lines.extend(_format(exc, label, sources, ("pumps", name, "meta")))
    if lines:
        raise ConfigError("\n".join(lines))
    return config


__all__ = [
    "ConfigError",
    "Filters",
    "PumpConfig",
    "PumpSpec",
    "SourceConfig",
    "dead_letter_key",
    "load_config",
]
