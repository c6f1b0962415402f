"""The lines ``collector-pump`` prints for an unknown ``COLLECTOR_PUMP_*`` variable:
the naming rule with the keys and sinks it could have meant, or that sink's meta
keys (``pump.config.load_config``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from collector.common.settings import EnvKey


def unknown_variable(var: str, top: Mapping[str, EnvKey], sinks: Mapping[str, str],
                     sink_keys: Iterable[str]) -> str:
    """The rule, with the top-level keys, a sink's keys and the configured sinks."""
    names = sorted({key.path[0] for key in top.values() if key.old is None})
    return (f"environment {var}: unknown variable; the rule: COLLECTOR_PUMP_<KEY> for a "
            f"top-level key ({', '.join(names)}), COLLECTOR_PUMP_<SINK>_<KEY> for "
            f"{', '.join(sink_keys)} of a configured "
            f"sink ({', '.join(sorted(sinks)) or 'none configured'}), "
            "COLLECTOR_PUMP_<SINK>_META_<KEY> for a key of its meta, "
            "COLLECTOR_PUMP_REDIS_PASSWORD/_USERNAME")


def unknown_meta(var: str, prefix: str, sinks: Mapping[str, str],
                 classes: Mapping[str, Any]) -> str | None:
    """The line for <prefix><SINK>_META_<KEY> naming no key of that sink's meta:
    it lists that sink's meta keys (None when ``var`` is not of that form)."""
    for env_sink, sink in sorted(sinks.items(), key=lambda kv: -len(kv[0])):
        start = f"{prefix}{env_sink}_META_"
        if var.startswith(start) and sink in classes:
            cls = classes[sink]
            keys = ", ".join(sorted(cls.Config.model_fields))
            return (f"environment {var} (pumps.{sink}.meta.{var[len(start):].lower()}): "
                    f"unknown key of the {cls.name} sink's meta; its meta keys: {keys} "
                    f"(each as {start}<KEY>)")
    return None
