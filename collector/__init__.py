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
gunicorn hooks live in :mod:`collector.gunicorn`.
"""

from ringbuf import RecordTooLarge

from ._client import Analytics, AnalyticsStats
from .config import CollectorConfig, ConfigError, load_config

__all__ = [
    "Analytics",
    "AnalyticsStats",
    "CollectorConfig",
    "ConfigError",
    "RecordTooLarge",
    "load_config",
]
