"""collector: per-request analytics from the app process into Redis.

Public surface::

    Analytics            the in-app client: record_hit(record) -> bool
    AnalyticsStats       its counters (stats())
    CollectorConfig      every config key (configs/collector.yaml)
    load_config          YAML file / mapping + COLLECTOR_* environment
    ConfigError          (ValueError) bad config: names source, key and rule
    RecordTooLarge       (ringbuf; ValueError) a record over max_record_bytes

``record_hit`` raises ``TypeError`` naming the field for a value that
cannot be encoded (see :mod:`collector._encode` for the conversions).
gunicorn hooks live in :mod:`collector.gunicorn`; what the daemon and the
pump share lives in :mod:`collector.common`.

The names above are imported on first use (PEP 562), so ``import
collector.common.stream`` (as the pump does) neither loads the client nor
registers its at-fork and at-exit hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ringbuf import RecordTooLarge

    from ._client import Analytics, AnalyticsStats
    from .config import CollectorConfig, ConfigError, load_config

_WHERE = {
    "Analytics": "collector._client",
    "AnalyticsStats": "collector._client",
    "CollectorConfig": "collector.config",
    "ConfigError": "collector.config",
    "load_config": "collector.config",
    "RecordTooLarge": "ringbuf",
}

__all__ = [
    "Analytics",
    "AnalyticsStats",
    "CollectorConfig",
    "ConfigError",
    "RecordTooLarge",
    "load_config",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'collector' has no attribute {name!r}")
    # __import__, not importlib.import_module: -X importtime then reports it.
    value = getattr(__import__(module, fromlist=[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
