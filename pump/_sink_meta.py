"""Each sink's ``meta``, loaded by its type's own config (``pump.config.load_config``):
before the pump's model is validated, the meta's renamed keys and its
``COLLECTOR_PUMP_<SINK>_META_<KEY>`` variables; after it, the sink's type known, its
driver installed and its meta valid."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from collector.common.settings import (
    ConfigError,
    EnvKey,
    apply_env,
    env_table,
    rename_keys,
    validate,
)

if TYPE_CHECKING:
    from .sinks import Sink


def meta_env(data: dict[str, Any], sink_names: Mapping[str, str], environ: Mapping[str, str],
             sources: dict[tuple[str, ...], str], label: str, prefix: str,
             ) -> tuple[dict[str, type[Sink]], dict[str, EnvKey], list[str]]:
    """Every sink in ``data["pumps"]`` of a known type gets its meta as a dict, its keys
    renamed and its variables (``<prefix><SINK>_META_<KEY>``, ``sink_names`` maps
    ``<SINK>`` to the sink) set. Returns the sinks' types by name, the variables and
    the problem lines."""
    from .sinks import registry

    known = registry()
    classes: dict[str, type[Sink]] = {}
    table: dict[str, EnvKey] = {}
    problems: list[str] = []
    for env_sink, sink in sink_names.items():
        spec = data["pumps"][sink]
        type_name = spec.get("type") or sink if isinstance(spec, dict) else None
        cls = known.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            continue  # reported by check_metas (unknown type) or by validation (not a mapping)
        classes[sink] = cls
        meta = spec.get("meta")
        if meta is None or isinstance(meta, Mapping):
            spec["meta"] = meta = dict(meta or {})
            rename_keys(cls.Config, meta, label, ("pumps", sink, "meta"))
        meta_table = env_table(cls.Config, f"{prefix}{env_sink}_META_", ("pumps", sink, "meta"))
        problems += apply_env(data, meta_table, environ, sources)
        table.update(meta_table)
    return classes, table, problems


def check_metas(sinks: Mapping[str, tuple[str, dict[str, Any]]],
                classes: Mapping[str, type[Sink]], label: str,
                sources: Mapping[tuple[str, ...], str]) -> list[str]:
    """One line per problem of the validated sinks (name -> (type, meta)): a type
    nobody registered, a driver that is not installed (and how to install it), a meta
    key that is not valid."""
    from .sinks import registry
    from .sinks._registry import missing_driver

    lines: list[str] = []
    for name, (type_name, meta) in sinks.items():
        cls = classes.get(name)
        if cls is None:
            where = sources.get(("pumps", name, "type"))
            where_s = f"environment {where}" if where else f"{label}: pumps.{name}.type"
            lines.append(f"{where_s}: unknown sink type {type_name!r}; known types: "
                         f"{', '.join(sorted(registry()))}")
            continue
        missing = missing_driver(cls)
        if missing is not None:  # an extra that is not installed: say how to install it
            lines.append(f"{label}: pumps.{name}.type: {missing}")
        try:
            validate(cls.Config, meta, label, sources, ("pumps", name, "meta"))
        except ConfigError as exc:
            lines.extend(str(exc).splitlines())
    return lines
