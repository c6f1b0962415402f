"""collector-pump configuration: defaults, environment overrides, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from collector.testing import RedisServer, console_script, free_port
from pump._redis import connect
from pump.config import ConfigError, load_config
from pump.sinks import registry

from .pump_plugins import ROOT

MINIMAL = {"pumps": {"n": {"type": "null"}}}


def test_defaults() -> None:
    cfg = load_config(MINIMAL, environ={})
    assert cfg.redis_url is None and cfg.effective_redis_url().startswith("unix://")
    assert cfg.stream_key == "collector:analytics" and cfg.shard_keys() == ["collector:analytics"]
    assert cfg.read_block_s == 1 and cfg.read_count == 50 and cfg.max_deliveries == 5
    assert cfg.health_address == "127.0.0.1:7070" and cfg.health_path == "healthz"
    assert cfg.detail_fields == ["policies", "deciders"] and cfg.trim is True
    assert cfg.source.type == "stream"
    assert cfg.source.list_key == "analytics-iam-system-analytics"
    assert cfg.sink_type("n") == "null" and cfg.pumps["n"].workers == 1


def test_shipped_config_is_valid_and_names_the_file_sink() -> None:
    cfg = load_config(ROOT / "configs" / "pump.yaml", environ={})
    assert cfg.sink_type("file") == "file"
    assert cfg.pumps["file"].meta["format"] == "jsonl"


def test_env_overrides_top_level_and_per_sink() -> None:
    env = {
        "COLLECTOR_PUMP_READ_COUNT": "7",
        "COLLECTOR_PUMP_REDIS_URL": "redis://h:1/0",
        "COLLECTOR_PUMP_DETAIL_FIELDS": "a,b",
        "COLLECTOR_PUMP_MY_SINK_WORKERS": "3",
        "COLLECTOR_PUMP_MY_SINK_OMIT_DETAILED_RECORDING": "true",
        "COLLECTOR_PUMP_MY_SINK_META_KEY": "k1",
        "COLLECTOR_PUMP_REDIS_PASSWORD": "s3cret",
        "COLLECTOR_PUMP_CONFIG": "ignored.yaml",
        "OTHER": "x",
    }
    cfg = load_config({"pumps": {"my-sink": {"type": "memory"}}}, environ=env)
    assert cfg.read_count == 7 and cfg.redis_url.get_secret_value() == "redis://h:1/0"
    assert cfg.detail_fields == ["a", "b"]
    spec = cfg.pumps["my-sink"]
    assert spec.workers == 3 and spec.omit_detailed_recording is True
    assert spec.meta == {"key": "k1"} and cfg.omit_for("my-sink") is True
    assert cfg.redis_password.get_secret_value() == "s3cret" and "s3cret" not in repr(cfg)


def test_password_is_masked_in_the_logged_url() -> None:
    cfg = load_config({**MINIMAL, "redis_url": "redis://u:pw@h:6379/0"}, environ={})
    assert cfg.redacted_redis_url() == "redis://u:***@h:6379/0"


def test_unknown_env_variable_names_the_rule() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(MINIMAL, environ={"COLLECTOR_PUMP_N_COLOUR": "red"})
    msg = str(err.value)
    assert "COLLECTOR_PUMP_N_COLOUR" in msg and "COLLECTOR_PUMP_<SINK>_<KEY>" in msg


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError,
                       match=r"environment COLLECTOR_PUMP_N_WORKERS \(pumps.n.workers"):
        load_config(MINIMAL, environ={"COLLECTOR_PUMP_N_WORKERS": "many"})


def test_unknown_keys_and_bad_values_name_file_key_and_rule(tmp_path: Path) -> None:
    path = tmp_path / "pump.yaml"
    path.write_text(
        "read_count: 0\nfoo: 1\nhealth_address: nowhere\n"
        "pumps:\n  n:\n    type: null\n    filters: {inc: {a: [1]}}\n    workers: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    lines = str(err.value).splitlines()
    assert len(lines) == 5, lines
    assert all(line.startswith(f"{path}: ") for line in lines)
    text = str(err.value)
    assert "read_count: Input should be greater than or equal to 1 (got 0)" in text
    assert "foo: unknown key; known keys:" in text and "read_block_s" in text
    assert "health_address: Value error, must be HOST:PORT" in text
    assert "pumps.n.filters.inc: unknown key; known keys: exclude, include" in text
    assert "pumps.n.workers: Input should be greater than or equal to 1" in text


def test_unknown_sink_type_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"pumps": {"x": {"type": "kafka2"}}}, environ={})
    msg = str(err.value)
    assert "unknown sink type 'kafka2'; known types:" in msg
    for name in ("memory", "null", *registry()):
        assert name in msg


def test_meta_is_validated_by_the_sinks_own_config() -> None:
    with pytest.raises(ConfigError, match=r"pumps.m.meta.colour: unknown key"):
        load_config({"pumps": {"m": {"type": "memory", "meta": {"colour": 1}}}}, environ={})


def test_malformed_yaml_and_non_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pumps: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_config(bad, environ={})
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml", environ={})


def test_inconsistent_timing_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"claim_idle_ms .* must be greater than batch_deadline"):
        load_config({**MINIMAL, "claim_idle_ms": 1000, "batch_deadline_s": 5}, environ={})


def test_credentials_only_from_environment() -> None:
    with pytest.raises(ConfigError, match="credentials come only from the environment"):
        load_config({**MINIMAL, "redis_password": "x"}, environ={})


def test_cli_reports_bad_config_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "pump.yaml"
    path.write_text("pumps:\n  x:\n    type: nope\n")
    proc = subprocess.run([*console_script("collector-pump"), "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown sink type 'nope'; known types:" in proc.stderr


def test_redis_client_credentials_from_environment_win_and_no_hidden_retries(
        redis_server: RedisServer) -> None:
    """pump._redis.connect goes through collector.common.redisconn.connect (the daemon's rules)."""
    url = redis_server.url.replace("redis://", "redis://urluser:urlpw@")
    env = {"COLLECTOR_PUMP_REDIS_USERNAME": "default", "COLLECTOR_PUMP_REDIS_PASSWORD": "envpw"}
    cfg = load_config({**MINIMAL, "redis_url": url, "read_block_s": 2}, environ=env)
    r = connect(cfg, block_s=cfg.read_block_s)
    kw = r.connection_pool.connection_kwargs
    assert (kw["username"], kw["password"]) == ("default", "envpw")
    assert kw["socket_timeout"] == cfg.redis_timeout_s + 2  # a blocking read fits
    assert r.get_retry().get_retries() == 0  # the worker backs off itself
    plain = connect(load_config({**MINIMAL, "redis_url": redis_server.url}, environ={}))
    assert plain.ping() and plain.get_retry().get_retries() == 0
    down = connect(load_config({**MINIMAL, "redis_url": f"redis://127.0.0.1:{free_port()}/0"},
                               environ={}))
    with pytest.raises(redis.ConnectionError):
        down.ping()


def test_a_sink_whose_driver_is_missing_fails_at_start_with_the_pip_command(
        tmp_path: Path) -> None:
    """httpx hidden in a subprocess (``sys.modules['httpx'] = None``, so it cannot be
    imported): both ``--check`` and a real start exit 2 before anything runs, with the
    exact command that installs the http sink's driver into this interpreter."""
    path = tmp_path / "pump.yaml"
    path.write_text("pumps:\n  h:\n    type: http\n    meta: {url: 'http://127.0.0.1:9/'}\n")
    code = "import sys; sys.modules['httpx'] = None; from pump.cli import main; main()"
    for extra in (["--check"], []):
        proc = subprocess.run([sys.executable, "-c", code, "--config", str(path), *extra],
                              capture_output=True, text=True, timeout=60, env=_env_without())
        assert proc.returncode == 2, proc.stderr
        assert (f"{path}: pumps.h.type: sink type 'http' needs httpx, which is not installed; "
                f"install it with: {sys.executable} -m pip install 'httpx>=0.27' "
                "(the collector[http] extra)") in proc.stderr, proc.stderr


def _env_without() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}


def test_a_sinks_timeout_above_the_batch_deadline_is_warned_about() -> None:
    """An attempt never outlasts batch_deadline_s: a sink's timeout_s set above it is
    named at load, with both values (and the variable that set it); the default is not."""
    from collector.common.settings import ConfigWarning

    base = {"batch_deadline_s": 10, "claim_idle_ms": 20_000}
    with pytest.warns(ConfigWarning) as caught:
        load_config({**base, "pumps": {"slow": {"type": "memory", "timeout_s": 45}}},
                    environ={})
    text = " ".join(str(w.message) for w in caught)
    assert "pumps.slow.timeout_s (45)" in text and "batch_deadline_s (10)" in text
    with pytest.warns(ConfigWarning, match="COLLECTOR_PUMP_SLOW_TIMEOUT_S"):
        load_config({**base, "pumps": {"slow": {"type": "memory"}}},
                    environ={"COLLECTOR_PUMP_SLOW_TIMEOUT_S": "11"})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        load_config({**base, "pumps": {"m": {"type": "memory"}}}, environ={})  # default 30
        load_config({**base, "pumps": {"m": {"type": "memory", "timeout_s": 10}}}, environ={})
