"""configs/collector.yaml and configs/pump.yaml document exactly the keys the models have.

A key counts as documented when it appears as a YAML key, also commented out
(``# rings_dir: /dev/shm/collector-0`` for a default that depends on the
machine). Loading the shipped files with deprecation warnings as errors
(pyproject's filterwarnings) proves they use no old key name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from collector.common.settings import RESERVED_ENV
from collector.config import CollectorConfig
from collector.config import load_config as load_collector
from pump.config import Filters, PumpConfig, PumpSpec, SourceConfig
from pump.config import load_config as load_pump
from pump.sinks import registry

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def documented(path: Path) -> dict[str, Any]:
    """The file as YAML, with commented-out ``# key: value`` lines counted as keys."""
    lines = []
    for line in path.read_text().splitlines():
        m = re.match(r"^(\s*)# ([a-z_][a-z0-9_]*:(?: .*)?)$", line)
        lines.append(m.group(1) + m.group(2) if m else line)
    return yaml.safe_load("\n".join(lines))


def test_collector_yaml_documents_every_key_and_no_other() -> None:
    doc = documented(CONFIGS / "collector.yaml")
    assert set(doc) == set(CollectorConfig.model_fields)
    load_collector(CONFIGS / "collector.yaml", environ={})


def test_the_fixed_interface_keys_keep_their_names() -> None:
    text = (CONFIGS / "collector.yaml").read_text()
    listed = text.split("# Fixed interface", 1)[1].split("\n\n", 1)[0]
    names = re.findall(r"[a-z_]{4,}", listed.split(":", 1)[1])
    assert names == ["enabled", "redis_url", "rings_dir", "pool_size", "batch_size",
                     "flush_interval_ms", "shutdown_timeout_s", "health_address"]
    assert set(names) <= set(CollectorConfig.model_fields)


def test_pump_yaml_documents_every_key_and_no_other() -> None:
    doc = documented(CONFIGS / "pump.yaml")
    file_only = set(PumpConfig.model_fields) - PumpConfig.env_only
    assert set(doc) == file_only
    assert set(doc["source"]) == set(SourceConfig.model_fields)
    (spec,) = doc["pumps"].values()
    assert set(spec) == set(PumpSpec.model_fields)
    assert set(spec["filters"]) == set(Filters.model_fields)
    text = (CONFIGS / "pump.yaml").read_text()
    for key in PumpConfig.env_only:  # credentials: documented as variables only
        assert f"COLLECTOR_PUMP_{key.upper()}" in text
    cfg = load_pump(CONFIGS / "pump.yaml", environ={})
    assert set(cfg.pumps["file"].meta) <= set(registry()["file"].Config.model_fields)


def test_every_sink_password_variable_is_reserved_for_the_daemon() -> None:
    """The daemon refuses unknown COLLECTOR_* variables: the sinks' must be reserved."""
    import importlib

    for cls in registry().values():
        env = getattr(importlib.import_module(cls.__module__), "PASSWORD_ENV", None)
        if env is not None:
            assert env in RESERVED_ENV, env
