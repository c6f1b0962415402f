"""collector-pump: reads the Redis stream and writes to pluggable sinks.

Public surface: :func:`load_config` / :class:`PumpConfig` (``configs/pump.yaml``),
:class:`ConfigError`, and the sink contract in :mod:`pump.sinks`. The worker
(``pump/_worker.py``), supervisor (``pump/_supervisor.py``) and the rest are
private; run the pump with ``collector-pump --config FILE``.
"""

from .config import ConfigError, PumpConfig, load_config

__all__ = ["ConfigError", "PumpConfig", "load_config"]
