"""The config base both services share (collector/common/settings.py): environment values
parsed by type, one registry of reserved COLLECTOR_* names, renamed keys, secrets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from collector.common.settings import ConfigDeprecationWarning, ConfigError, ConfigWarning
from collector.config import load_config as load_collector
from pump.config import load_config as load_pump
from pump.sinks import build_sink

from .pump_plugins import ROOT

MINIMAL = {"pumps": {"n": {"type": "null"}}}


def test_environment_values_are_parsed_by_the_keys_type_not_as_yaml() -> None:
    env = {"COLLECTOR_PUMP_M_META_KEY": "007", "COLLECTOR_PUMP_M_META_DELAY_S": "0.5",
           "COLLECTOR_PUMP_M_META_HEALTHY": "false", "COLLECTOR_PUMP_TRIM": "no",
           "COLLECTOR_PUMP_DETAIL_FIELDS": '["a", "b"]', "COLLECTOR_PUMP_M_MAX_RECORD_BYTES": "",
           "COLLECTOR_PUMP_M_FILTERS_INCLUDE": '{"effect": ["deny"]}',
           "COLLECTOR_PUMP_SOURCE_TYPE": "list"}
    cfg = load_pump({"pumps": {"m": {"type": "memory", "max_record_bytes": 100}}}, environ=env)
    spec = cfg.pumps["m"]
    assert spec.meta == {"key": "007", "delay_s": "0.5", "healthy": "false"}  # typed below
    sink = build_sink("memory", spec.meta)
    assert (sink.config.key, sink.config.delay_s, sink.config.healthy) == ("007", 0.5, False)
    assert cfg.trim is False and cfg.detail_fields == ["a", "b"]
    assert spec.max_record_bytes is None and spec.filters.include == {"effect": ["deny"]}
    assert cfg.source.type == "list"
    daemon = load_collector({}, environ={"COLLECTOR_REDIS_SERVER": "123",
                                         "COLLECTOR_RING_CHECKSUM": "1"})
    assert daemon.redis_server == "123" and daemon.ring_checksum is True
    with pytest.raises(ConfigError, match=r"environment COLLECTOR_PUMP_DETAIL_FIELDS "
                                          r"\(detail_fields\): not valid JSON"):
        load_pump(MINIMAL, environ={"COLLECTOR_PUMP_DETAIL_FIELDS": "[a, b]"})


def test_unknown_collector_variables_fail_the_reserved_ones_do_not() -> None:
    reserved = {"COLLECTOR_CONFIG": "x.yaml", "COLLECTOR_PUMP_READ_COUNT": "5",
                "COLLECTOR_PURE_PYTHON": "1", "COLLECTOR_TEST_PG_DSN": "dbname=x",
                "COLLECTOR_MONGO_PASSWORD": "pw", "COLLECTOR_POSTGRES_PASSWORD": "pw",
                "COLLECTOR_CHAOS_SEED": "1", "OTHER": "x"}
    assert load_collector({}, environ=reserved).pool_size == 2
    with pytest.raises(ConfigError) as err:
        load_collector({}, environ={**reserved, "COLLECTOR_POOL_SIZ": "3"})
    msg = str(err.value)
    assert msg.startswith("environment COLLECTOR_POOL_SIZ: unknown variable; the rule: "
                          "COLLECTOR_<KEY>")
    assert "pool_size" in msg and "COLLECTOR_PUMP_*" in msg
    with pytest.raises(ConfigError, match="environment COLLECTOR_PUMP_READ_COUN: unknown "
                                          "variable; the rule: COLLECTOR_PUMP_<KEY>"):
        load_pump(MINIMAL, environ={"COLLECTOR_PUMP_READ_COUN": "5", "COLLECTOR_POOL_SIZE": "3"})


def test_old_key_names_still_work_with_a_warning_naming_both() -> None:
    old = {"purge_delay": 0.5, "health_check_address": "127.0.0.1:7999",
           "initial_backoff_ms": 10, "max_backoff_ms": 20, "source": {"list_batch": 7},
           "pumps": {"r": {"type": "redis", "timeout": 3, "max_record_size": 100,
                           "meta": {"max_len": 9}}}}
    with pytest.warns(ConfigDeprecationWarning) as caught:
        cfg = load_pump(old, environ={"COLLECTOR_PUMP_HEALTH_CHECK_PATH": "alive"})
    said = {str(w.message) for w in caught}
    for line in ("<mapping>: 'purge_delay' is deprecated; use 'read_block_s'",
                 "<mapping>: source: 'list_batch' is deprecated; use 'list_batch_size'",
                 "<mapping>: pumps.r: 'timeout' is deprecated; use 'timeout_s'",
                 "<mapping>: pumps.r.meta: 'max_len' is deprecated; use 'max_entries'",
                 "environment COLLECTOR_PUMP_HEALTH_CHECK_PATH: 'COLLECTOR_PUMP_HEALTH_CHECK_PATH'"
                 " is deprecated; use 'COLLECTOR_PUMP_HEALTH_PATH'"):
        assert any(s.startswith(line) for s in said), (line, said)
    assert (cfg.read_block_s, cfg.health_address, cfg.health_path) == (0.5, "127.0.0.1:7999",
                                                                       "alive")
    assert (cfg.retry_initial_ms, cfg.retry_max_ms, cfg.source.list_batch_size) == (10, 20, 7)
    spec = cfg.pumps["r"]
    assert (spec.timeout_s, spec.max_record_bytes, spec.meta) == (3, 100, {"max_entries": 9})
    with pytest.raises(ConfigError, match=r"both 'purge_delay' .* and 'read_block_s'"):
        load_pump({**MINIMAL, "purge_delay": 1, "read_block_s": 2}, environ={})


def test_max_backlog_entries_is_deprecated_for_max_backlog_bytes() -> None:
    assert load_collector({}, environ={}).max_backlog_bytes == 256 << 20
    with pytest.warns(ConfigWarning, match="max_backlog_entries is deprecated: the budget "
                                           "is max_backlog_bytes"):
        cfg = load_collector({"max_backlog_entries": 5}, environ={})
    assert cfg.max_backlog_entries == 5  # still a cap on the length until removed


def test_the_pump_cli_reports_a_renamed_key(tmp_path: Path) -> None:
    path = tmp_path / "pump.yaml"
    path.write_text("purge_delay: 0.5\npumps:\n  n:\n    type: 'null'\n")
    exe = ROOT / ".venv" / "bin" / "collector-pump"
    proc = subprocess.run([str(exe), "--config", str(path), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"{path}: 'purge_delay' is deprecated; use 'read_block_s'" in proc.stderr


def test_secrets_are_never_shown() -> None:
    with pytest.raises(ConfigError) as err:
        load_collector({"redis_password": 424242, "redis_url": "http://u:pw-91@h/"}, environ={})
    msg = str(err.value)
    assert "redis_password: Input should be a valid string (got '***')" in msg
    assert "redis_url: Value error, must be a redis://" in msg and "pw-91" not in msg
    with pytest.raises(ConfigError) as err:
        load_pump({"pumps": {"pg": {"type": "postgres", "meta": {"password": 55555,
                                                                  "dsn": ["x"]}}}}, environ={})
    msg = str(err.value)
    assert "pumps.pg.meta.password: Input should be a valid string (got '***')" in msg
    assert "pumps.pg.meta.dsn:" in msg and "55555" not in msg and "'x'" not in msg
    cfg = load_pump({"redis_url": "redis://u:pw-77@h:1/0",
                     "pumps": {"m": {"type": "mongo", "meta": {"uri": "mongodb://u:pw-66@h/"}},
                               "h": {"type": "http", "meta": {
                                   "url": "https://h/in", "headers": {"X-Token": "tok-55"}}}}},
                    environ={})
    assert "pw-77" not in repr(cfg) and cfg.redacted_redis_url() == "redis://u:***@h:1/0"
    mongo = build_sink("mongo", cfg.pumps["m"].meta)
    http = build_sink("http", cfg.pumps["h"].meta)
    assert "pw-66" not in repr(mongo.config) and "mongodb://u:***@h/" in repr(mongo.config)
    assert "tok-55" not in repr(http.config)
    pg = build_sink("postgres", {"dsn": "host=h password=pw-44 dbname=d"})
    assert "pw-44" not in repr(pg.config) and "password=***" in repr(pg.config)


def test_logs_hide_a_urls_credentials_not_the_url() -> None:
    from collector.common.redact import scrub
    load_pump({"redis_url": "redis://127.0.0.1:6391/3", **MINIMAL}, environ={})
    assert scrub("to redis://127.0.0.1:6391/3 now") == "to redis://127.0.0.1:6391/3 now"
    load_pump({"redis_url": "redis://u:pw-8812q@127.0.0.1:6391/4", **MINIMAL}, environ={})
    assert scrub("to redis://u:pw-8812q@127.0.0.1:6391/4") == "to redis://u:***@127.0.0.1:6391/4"
