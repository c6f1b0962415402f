"""Configuration of ``collector-pump`` (``configs/pump.yaml`` documents every key).

Sources, later ones winning: the defaults below, a YAML file (or a mapping),
then environment variables. Unknown keys, unknown ``COLLECTOR_PUMP_*``
variables and bad values raise :class:`ConfigError`, one line per problem,
naming the source (file or environment variable), the key path and the
rule. The base, the shared keys and the value parsing are
:mod:`collector.common.settings` and :mod:`collector.common.service`, the
same as the daemon's.

Environment overrides (each value parsed by its key's type: ``5``, ``true``,
lists as ``a,b`` or JSON, mappings as JSON; never as YAML):

- ``COLLECTOR_PUMP_<KEY>`` sets a top-level key, e.g.
  ``COLLECTOR_PUMP_READ_COUNT=100`` or ``COLLECTOR_PUMP_REDIS_URL=redis://h:6379/0``;
  ``COLLECTOR_PUMP_SOURCE_TYPE=list`` a key of ``source``.
- ``COLLECTOR_PUMP_REDIS_PASSWORD`` / ``COLLECTOR_PUMP_REDIS_USERNAME`` give
  Redis credentials without putting them in the URL (never logged; never in
  the file).
- ``COLLECTOR_PUMP_<SINK>_<KEY>`` sets a key of the sink named ``<sink>`` in
  ``pumps:`` (``type``, ``timeout_s``, ``omit_detailed_recording``,
  ``max_record_bytes``, ``workers``, ``filters_*``); ``<SINK>`` is the sink
  name upper-cased with ``-`` and ``.`` as ``_``, e.g. ``COLLECTOR_PUMP_FILE_WORKERS=2``.
- ``COLLECTOR_PUMP_<SINK>_META_<KEY>`` sets one key of that sink's ``meta``,
  parsed by the sink's own config type, e.g. ``COLLECTOR_PUMP_POSTGRES_META_DSN=...``
  (``pump/_sink_meta.py``).
- Top-level keys are matched first. ``COLLECTOR_PUMP_CONFIG`` is the CLI's
  config path. Any other ``COLLECTOR_PUMP_*`` variable is an error, so a typo
  does not go unnoticed.

Renamed keys (the old names still work, with a deprecation warning):
``purge_delay`` -> ``read_block_s``, ``health_check_address`` ->
``health_address``, ``health_check_path`` -> ``health_path``,
``initial_backoff_ms`` -> ``retry_initial_ms``, ``max_backoff_ms`` ->
``retry_max_ms``, ``source.list_batch`` -> ``source.list_batch_size``,
``pumps.<name>.timeout`` -> ``timeout_s``, ``pumps.<name>.max_record_size``
-> ``max_record_bytes``.
"""

from __future__ import annotations

import importlib
import os
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from collector.common.service import ServiceSettings
from collector.common.settings import (
    ConfigError,
    ConfigWarning,
    EnvKey,
    HostPort,
    Settings,
    apply_env,
    env_name,
    env_table,
    read_yaml_mapping,
    rename_keys,
    validate,
)
from collector.common.stream import default_redis_url, list_shard_key

from ._env_errors import unknown_meta, unknown_variable
from ._sink_meta import check_metas, meta_env

ENV_PREFIX = "COLLECTOR_PUMP_"
_ENV_IGNORED = {"COLLECTOR_PUMP_CONFIG"}

Scalar = str | int | float | bool | None


class Filters(Settings):
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


class PumpSpec(Settings):
    """One sink under ``pumps:``."""

    renamed: ClassVar[Mapping[str, str]] = {"timeout": "timeout_s",
                                            "max_record_size": "max_record_bytes"}

    type: str | None = None
    filters: Filters = Field(default_factory=Filters)
    timeout_s: float = Field(default=30.0, gt=0, le=3600)  # per write attempt
    omit_detailed_recording: bool | None = None
    max_record_bytes: int | None = Field(default=None, ge=64)  # of msgpack
    workers: int = Field(default=1, ge=1, le=64)
    # bytes of spooled entries per worker when the sink lags (0: no spool, the sink's
    # group holds the stream as it did before spools)
    spool_max_bytes: int = Field(default=1 << 30, ge=0)
    overflow: Literal["block", "drop_oldest"] = "drop_oldest"  # when the spool is full
    # validated by the sink's own Config; not in repr (it may hold a password)
    meta: dict[str, Any] = Field(default_factory=dict, repr=False)


class SourceConfig(Settings):
    renamed: ClassVar[Mapping[str, str]] = {"list_batch": "list_batch_size"}

    type: Literal["stream", "list"] = "stream"
    list_key: str = Field(default="analytics-iam-system-analytics", min_length=1)
    list_batch_size: int = Field(default=1000, ge=1, le=100_000)  # records per script call
    # The list's records: iam-authz-server's (converted to what iam-pump stores),
    # detected by their Go field names (auto), or passed on as they are (raw).
    format: Literal["auto", "iam", "raw"] = "auto"


class PumpConfig(ServiceSettings):
    """Every key of ``configs/pump.yaml`` with its default.

    The Redis, retry, shutdown, health and log keys come from
    :class:`~collector.common.service.ServiceSettings` (shared with the daemon).
    """

    renamed: ClassVar[Mapping[str, str]] = {
        "purge_delay": "read_block_s", "health_check_address": "health_address",
        "health_check_path": "health_path", "initial_backoff_ms": "retry_initial_ms",
        "max_backoff_ms": "retry_max_ms",
    }
    # Credentials from the environment only (never in the file, never logged).
    env_only: ClassVar[frozenset[str]] = frozenset({"redis_username", "redis_password"})

    # This pump's part of its consumer names (<instance>:<sink>:<index>); None:
    # <host name>-<health port>, stable across restarts and unique on a host.
    instance_name: str | None = Field(default=None, min_length=1, max_length=200)
    read_block_s: float = Field(default=1.0, gt=0, le=60)  # a read blocks this long
    read_count: int = Field(default=50, ge=1, le=10_000)  # entries per XREADGROUP
    health_address: HostPort = "127.0.0.1:7070"
    health_path: str = "healthz"
    omit_detailed_recording: bool = False
    detail_fields: list[str] = Field(default_factory=lambda: ["policies", "deciders"])
    max_deliveries: int = Field(default=5, ge=1, le=1000)
    dead_letter_max_entries: int = Field(default=10_000, ge=1)  # per dead-letter stream
    claim_idle_ms: int = Field(default=120_000, ge=100)
    retry_initial_ms: float = Field(default=100.0, gt=0)
    batch_deadline_s: float = Field(default=60.0, gt=0, le=3600)
    stuck_write_grace_s: float = Field(default=30.0, ge=1)
    max_lag_entries: int = Field(default=10_000, ge=1)
    trim: bool = True
    trim_interval_s: float = Field(default=10.0, gt=0)
    # Groups of other pump instances on the same stream that trimming must wait for too
    # (only the configured sinks' groups and these hold trimming back).
    respect_groups: list[str] = Field(default_factory=list)
    # The stream's budget a sink's spooling is measured against (a group holding back more
    # than half of a shard's share spools); None: the daemon's, as it publishes it
    # (pump/_budget.py). Set, it wins, and a different daemon value is logged.
    max_backlog_bytes: int | None = Field(default=None, ge=64 << 10)
    spool_dir: str = Field(default_factory=lambda: str(default_spool_dir()), min_length=1)
    source: SourceConfig = Field(default_factory=SourceConfig)
    plugins: list[str] = Field(default_factory=list)
    pumps: dict[str, PumpSpec] = Field(min_length=1)

    @field_validator("health_path")
    @classmethod
    def _path(cls, v: str) -> str:
        v = v.strip("/")
        if not v or v in ("readyz", "metrics"):
            raise ValueError("must be a non-empty path other than readyz and metrics")
        return v

    @field_validator("instance_name")
    @classmethod
    def _instance(cls, v: str | None) -> str | None:
        if v is not None and any(c.isspace() or c in ":{}" for c in v):
            raise ValueError(f"instance name {v!r} must have no spaces, ':' or braces")
        return v

    @field_validator("pumps")
    @classmethod
    def _names(cls, v: dict[str, PumpSpec]) -> dict[str, PumpSpec]:
        for name in v:
            if not name or any(c in name for c in " :{}\n\t"):
                raise ValueError(
                    f"sink name {name!r} must be non-empty without spaces, ':' or braces")
        return v

    @field_validator("respect_groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or any(c in name for c in " \n\t"):
                raise ValueError(f"group name {name!r} must be non-empty without spaces")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _consistent(self) -> PumpConfig:
        if self.claim_idle_ms <= self.batch_deadline_s * 1000:
            raise ValueError(
                f"claim_idle_ms ({self.claim_idle_ms}) must be greater than batch_deadline_s "
                f"in ms ({self.batch_deadline_s * 1000:g}), or live workers' batches get "
                "claimed by others")
        return self

    # -- derived --------------------------------------------------------------
    def effective_redis_url(self) -> str:
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        return default_redis_url()

    def trim_groups(self) -> frozenset[str]:
        """The groups whose unread data trimming keeps: the sinks' and ``respect_groups``."""
        return frozenset(self.pumps) | frozenset(self.respect_groups)

    def instance(self) -> str:
        """This pump's consumer name prefix: ``instance_name``, else
        ``<host name>-<health port>`` (two pumps on one host cannot share a port)."""
        if self.instance_name is not None:
            return self.instance_name
        return f"{socket.gethostname()}-{self.health_host_port[1]}"

    def shard_keys(self) -> list[str]:
        """The daemon's shards, and on a cluster with ``source.type: list`` the list
        source's own shard in the list's slot (``stream.list_shard_key``)."""
        keys = super().shard_keys()
        if self.cluster() and self.source.type == "list":
            keys.append(list_shard_key(self.stream_key, self.source.list_key))
        return keys

    def sink_type(self, name: str) -> str:
        return self.pumps[name].type or name

    def omit_for(self, name: str) -> bool:
        """Whether sink ``name`` gets records without detail: the top-level
        ``omit_detailed_recording`` applies before every sink (as in iam-pump), a
        sink's own flag can only add blanking."""
        return self.omit_detailed_recording or bool(self.pumps[name].omit_detailed_recording)


def default_spool_dir() -> Path:
    """``$XDG_STATE_HOME/collector-pump/spool``, else ``~/.local/state/collector-pump/spool``
    (disk, not a tmpfs: a spool must survive a reboot)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "collector-pump" / "spool"


def import_plugins(modules: list[str]) -> None:
    """Import third-party sink modules (each calls ``pump.sinks.register``)."""
    for mod in modules:
        importlib.import_module(mod)


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | PumpConfig | None,
    *,
    environ: Mapping[str, str] | None = None,
    iam: bool | None = None,
    sources_out: dict[tuple[str, ...], str] | None = None,
) -> PumpConfig:
    """Load and validate the pump configuration, including every sink's ``meta``.

    ``iam``: the file is iam-pump's ``iam-pump.yaml`` (True), ours (False), or
    either, told apart by its keys (None; :func:`pump.iam.config.is_iam_config`).
    ``sources_out`` receives key path -> the environment variable that set it.
    """
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
    from .iam.config import from_iam, is_iam_config

    if iam or (iam is None and is_iam_config(data)):
        data = from_iam(data, label)
    pumps = data.get("pumps")
    if isinstance(pumps, Mapping):
        data["pumps"] = {k: (dict(v) if isinstance(v, Mapping) else v) if v is not None else {}
                         for k, v in pumps.items()}
    for key in sorted(PumpConfig.env_only & set(data)):
        raise ConfigError(
            f"{label}: {key}: unknown key; credentials come only from the environment "
            f"(COLLECTOR_PUMP_{key.upper()}) or the redis_url")
    rename_keys(PumpConfig, data, label)
    env = os.environ if environ is None else environ
    sources: dict[tuple[str, ...], str] = {} if sources_out is None else sources_out

    # Top-level keys win over a sink's: COLLECTOR_PUMP_<SINK>_<KEY> entries first.
    top = env_table(PumpConfig, ENV_PREFIX, exclude=frozenset({"pumps"}))
    sink_names = {env_name(n): n for n in data["pumps"]} if isinstance(
        data.get("pumps"), Mapping) else {}
    table: dict[str, EnvKey] = {}
    for env_sink, sink in sink_names.items():
        table.update(env_table(PumpSpec, f"{ENV_PREFIX}{env_sink}_", ("pumps", sink),
                               exclude=frozenset({"meta"})))
    table.update(top)
    problems = apply_env(data, table, env, sources)

    # Each sink's meta, by its type's own config (its keys and its value types).
    import_error = _import_plugins(data.get("plugins"), label)
    classes, meta_table, meta_problems = meta_env(data, sink_names, env, sources, label,
                                                  ENV_PREFIX)
    problems += meta_problems
    table.update(meta_table)
    problems += [unknown_meta(var, ENV_PREFIX, sink_names, classes)
                 or unknown_variable(var, top, sink_names,
                                     (k for k in PumpSpec.model_fields if k != "meta"))
                 for var in sorted(env)
                 if var.startswith(ENV_PREFIX) and var not in table and var not in _ENV_IGNORED]
    if import_error:
        problems.append(import_error)
    if problems:
        raise ConfigError("\n".join(problems))

    config = validate(PumpConfig, data, label, sources)
    lines = check_metas({name: (config.sink_type(name), spec.meta)
                         for name, spec in config.pumps.items()}, classes, label, sources)
    if lines:
        raise ConfigError("\n".join(lines))
    _warn_filter_fields(config, label)
    _warn_timeouts(config, label, sources)
    return config


def _warn_timeouts(config: PumpConfig, label: str,
                   sources: Mapping[tuple[str, ...], str]) -> None:
    """A sink's ``timeout_s`` set above ``batch_deadline_s`` is not what its writes get:
    every attempt ends by the batch's deadline. A warning, not an error: the value still
    bounds the sink's health checks, and an iam-pump file's ``timeout`` has no deadline
    beside it. The default (30 s, not set) is capped without a word."""
    deadline = config.batch_deadline_s
    for name, spec in config.pumps.items():
        if "timeout_s" not in spec.model_fields_set or spec.timeout_s <= deadline:
            continue
        var = sources.get(("pumps", name, "timeout_s"))
        where = f" (from {var})" if var else ""
        dvar = sources.get(("batch_deadline_s",))
        dwhere = f" (from {dvar})" if dvar else ""
        warnings.warn(ConfigWarning(label, (
            f"pumps.{name}.timeout_s ({spec.timeout_s:g}){where} is more than "
            f"batch_deadline_s ({deadline:g}){dwhere}: each write attempt of sink {name!r} "
            f"gets {deadline:g} s at most; raise batch_deadline_s (and claim_idle_ms above it) "
            "or lower timeout_s")), stacklevel=2)


def _warn_filter_fields(config: PumpConfig, label: str) -> None:
    """A filter on a field iam's records do not have drops every record: say so."""
    if config.source.type != "list" or config.source.format == "raw":
        return
    from .iam.record import STORED_NAMES

    for name, spec in config.pumps.items():
        include, exclude = spec.filters.effective()
        for field in sorted(set(include) | set(exclude)):
            if field not in STORED_NAMES:
                hint = field.lower() if field.lower() in {n.lower() for n in STORED_NAMES} else ""
                warnings.warn(ConfigWarning(label, (
                    f"pumps.{name}.filters names the field {field!r}, which records from "
                    f"iam-authz-server do not have (they have {', '.join(STORED_NAMES)})"
                    + (f"; did you mean {hint!r}?" if hint else "")
                    + ("; every record would be filtered out" if field in include else ""))),
                    stacklevel=2)


def _import_plugins(plugins: Any, label: str) -> str | None:
    if not isinstance(plugins, list):
        return None  # validation reports it
    try:
        import_plugins([p for p in plugins if isinstance(p, str)])
    except ImportError as exc:
        return f"{label}: plugins: cannot import {exc.name!r}: {exc}"
    return None


__all__ = [
    "ConfigError",
    "Filters",
    "PumpConfig",
    "PumpSpec",
    "SourceConfig",
    "load_config",
]
