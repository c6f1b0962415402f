"""Sinks of ``collector-pump``: one module each, registered by name.

Built-in sinks are imported lazily by :func:`registry`; third parties add
sinks through the ``collector.sinks`` entry point group (the entry point
loads a module or class that calls :func:`register`).
"""

from __future__ import annotations

from ._base import (
    Batch,
    ChangedRecord,
    OutageError,
    PermanentError,
    RawRecord,
    Record,
    Records,
    RetryableError,
    Sink,
    SinkConfig,
    SinkError,
    Verdict,
    register,
)
from ._registry import BUILTIN_MODULES, build_sink, registry, sink_class

__all__ = [
    "BUILTIN_MODULES",
    "Batch",
    "ChangedRecord",
    "OutageError",
    "PermanentError",
    "RawRecord",
    "Record",
    "Records",
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
