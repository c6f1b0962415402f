"""Sink types by name: the built-in modules and the ``collector.sinks`` entry points.

:func:`pump.sinks.register` (in ``_base``) fills the table; this module
imports the built-in sink modules and third-party entry points the first
time the table is read, and builds sinks from their validated ``meta``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from ._base import _REGISTRY, Sink

# Module names under pump.sinks that hold built-in sinks. Each one imports
# without its driver (drivers are imported when a sink opens), so every
# built-in type is always known.
BUILTIN_MODULES = (
    "memory", "null", "stdout", "file", "mongo", "postgres", "syslog", "http",
    "prometheus", "redis", "aggregate",
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
    for ep in entry_points(group=ENTRY_POINT_GROUP):
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
