"""Sinks of ``collector-pump``: one module each, registered by name.

Built-in sinks are imported lazily by :func:`registry`; third parties add
sinks through the ``collector.sinks`` entry point group (the entry point
loads a module or class that calls :func:`register`).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ._base import (
    Batch,
    PermanentError,
    Record,
    RetryableError,
    Sink,
    SinkConfig,
    SinkError,
    Verdict,
    build_sink,
    register,
    registry,
    sink_class,
)

# Module names under pump.sinks that hold built-in sinks. A module that
# fails to import because an optional driver is missing is skipped.
BUILTIN_MODULES = (
    "memory", "null", "stdout", "file", "mongo", "postgres", "syslog", "http",
    "prometheus", "redis",
)

_loaded = False


def _load_builtin_and_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{mod}":
                continue  # not written yet
            raise
    for ep in entry_points(group="collector.sinks"):
        ep.load()


__all__ = [
    "Batch",
    "PermanentError",
    "Record",
    "RetryableError",
    "Sink",
    "SinkConfig",
    "SinkError",
    "Verdict",
    "build_sink",
    "register",
    "registry",
    "sink_class",
]
