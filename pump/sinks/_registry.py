"""Sink types by name: the built-in modules and the ``collector.sinks`` entry points.

:func:`pump.sinks.register` (in ``_base``) fills the table; this module
imports the built-in sink modules and third-party entry points the first
time the table is read, and builds sinks from their validated ``meta``.
"""

from __future__ import annotations

import importlib
import importlib.util
import shlex
import sys
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from ._base import _REGISTRY, Sink

# Module names under pump.sinks that hold built-in sinks. Each one imports
# without its driver (drivers are imported when a sink opens, and are extras:
# Sink.requires / Sink.extra), so every built-in type is always known and a
# missing driver is reported by missing_driver() when the pump loads its config.
BUILTIN_MODULES = (
    "memory", "null", "stdout", "file", "mongo", "postgres", "syslog", "http",
    "prometheus", "redis", "aggregate", "kafka", "influx", "elasticsearch",
)
ENTRY_POINT_GROUP = "collector.sinks"

_loaded = False


def _load_builtin_and_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(f"pump.sinks.{mod}")
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def registry() -> Mapping[str, type[Sink]]:
    """Every known sink type, built-in and from ``collector.sinks`` entry points."""
    _load_builtin_and_plugins()
    return dict(_REGISTRY)


def sink_class(type_name: str) -> type[Sink]:
    known = registry()
    try:
        return known[type_name]
    except KeyError:
        raise ValueError(
            f"unknown sink type {type_name!r}; known types: {', '.join(sorted(known))}"
        ) from None


def build_sink(type_name: str, meta: Mapping[str, Any] | None) -> Sink:
    """Validate ``meta`` against the sink's config class and construct it."""
    cls = sink_class(type_name)
    return cls(cls.Config.model_validate(dict(meta or {})))


def missing_driver(cls: type[Sink]) -> str | None:
    """None when ``cls``'s driver is installed, else what is missing and the pip
    command that installs it into this interpreter (from the package's own extras)."""
    missing = [m for m in cls.requires if not _installed(m)]
    if not missing:
        return None
    reqs = _extra_requirements(cls.extra) or missing
    command = " ".join([sys.executable, "-m", "pip", "install", *map(shlex.quote, reqs)])
    extra = f" (the collector[{cls.extra}] extra)" if cls.extra else ""
    return (f"sink type {cls.name!r} needs {', '.join(missing)}, which is not installed; "
            f"install it with: {command}{extra}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _extra_requirements(extra: str | None) -> list[str]:
    """The requirements the ``collector[extra]`` extra adds, from the installed metadata."""
    if not extra:
        return []
    try:
        requires = metadata.requires("collector") or []
    except metadata.PackageNotFoundError:
        return []
    out = []
    for req in requires:
        spec, _, marker = req.partition(";")
        if marker.replace("'", '"').split() == ["extra", "==", f'"{extra}"']:
            out.append(spec.strip())
    return out
