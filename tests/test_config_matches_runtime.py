"""Validation that matches the runtime (issue 10, finding 7).

Everything the running daemon, pump or app would refuse is refused at load,
by the real CLIs (``--check`` and a start), naming the key, the value and
the rule; a pump that cannot use Redis exits 3 after a bounded wait, as the
daemon does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from collector import Analytics
from collector.config import ConfigError
from collector.testing import (
    Pump,
    RedisServer,
    clean_environ,
    console_script,
    free_port,
    write_config,
)


def _cli(tmp_path: Path, name: str, config: dict[str, Any], *args: str,
         env: dict[str, str] | None = None) -> tuple[int, str]:
    path = write_config(tmp_path / f"{name}-{free_port()}.yaml", config)
    res = subprocess.run([*console_script(name), "--config", str(path), *args],
                         capture_output=True, text=True, timeout=60, env=clean_environ(env))
    return res.returncode, res.stdout + res.stderr


@pytest.mark.parametrize(("keys", "says"), [
    ({"ring_capacity_bytes": 2**41}, ["ring_capacity_bytes", "2199023255552", "between 4096 and"]),
    ({"ring_capacity_bytes": 3 << 20}, ["ring_capacity_bytes", "3145728", "power of two"]),
    ({"ring_capacity_bytes": 65536, "max_record_bytes": 65536},
     ["ring_capacity_bytes=65536", "max_record_bytes=65536", "at least"]),
])
def test_ring_the_app_could_not_open_is_refused_at_load(tmp_path: Path, keys: dict[str, Any],
                                                        says: list[str]) -> None:
    code, out = _cli(tmp_path, "collector-daemon", keys, "--check")
    assert code == 2, out
    for word in says:
        assert word in out, out
    with pytest.raises(ConfigError, match="ring_capacity_bytes"):
        Analytics.from_config({**keys, "rings_dir": str(tmp_path / "rings")})
    assert _cli(tmp_path, "collector-daemon", {"ring_capacity_bytes": 2**40}, "--check")[0] == 0


def test_missing_auth_env_is_refused_at_load(tmp_path: Path) -> None:
    pumps = {"pumps": {"web": {"type": "http", "meta": {
        "url": "http://127.0.0.1:1/in", "auth_env": "N10_TEST_MISSING_TOKEN"}}}}
    code, out = _cli(tmp_path, "collector-pump", pumps, "--check")
    assert code == 2, out
    assert "pumps.web.meta.auth_env" in out and "N10_TEST_MISSING_TOKEN" in out, out
    assert "not set" in out, out
    code, out = _cli(tmp_path, "collector-pump", pumps)  # a start refuses it the same way
    assert code == 2 and "N10_TEST_MISSING_TOKEN" in out, out
    code, out = _cli(tmp_path, "collector-pump", pumps, "--check",
                     env={"N10_TEST_MISSING_TOKEN": "Bearer t0ken-n10"})
    assert code == 0, out


def test_unknown_meta_key_lists_that_sinks_meta_keys(tmp_path: Path) -> None:
    pumps = {"pumps": {"pg": {"type": "postgres"}}}
    meta_keys = ["application_name", "connect_timeout_s", "dsn", "password", "table"]
    # in the file
    code, out = _cli(tmp_path, "collector-pump",
                     {"pumps": {"pg": {"type": "postgres", "meta": {"tabel": "x"}}}}, "--check")
    assert code == 2 and "pumps.pg.meta.tabel: unknown key" in out, out
    assert all(k in out for k in meta_keys), out
    # from the environment: that sink's meta keys, not the sink-level keys
    code, out = _cli(tmp_path, "collector-pump", pumps, "--check",
                     env={"COLLECTOR_PUMP_PG_META_TABEL": "x"})
    assert code == 2, out
    line = next(x for x in out.splitlines() if "COLLECTOR_PUMP_PG_META_TABEL" in x)
    assert "pumps.pg.meta" in line and all(k in line for k in meta_keys), line
    assert "workers" not in line and "omit_detailed_recording" not in line, line


def test_pump_exits_3_when_redis_refuses_or_stays_away(tmp_path: Path) -> None:
    """Refused credentials end the wait at once; an unreachable Redis after
    ``startup_redis_wait_s``: exit 3 either way, as the daemon."""
    pumps = {"null": {}}
    with RedisServer(tmp_path / "redis", password="right-pw-n10") as redis_server:
        refused = Pump.write(tmp_path / "refused", f"redis://:wrong-pw-n10@127.0.0.1:"
                             f"{redis_server.port}/0", pumps, startup_redis_wait_s=60)
        refused.start(wait=False)
        try:
            assert refused.wait(30) == 3  # well before the 60 s wait
            assert "refused the credentials" in refused.log_text()
        finally:
            refused.close()
    away = Pump.write(tmp_path / "away", f"redis://127.0.0.1:{free_port()}/0", pumps,
                      startup_redis_wait_s=1)
    away.start(wait=False)
    try:
        assert away.wait(30) == 3
        assert "unreachable after startup_redis_wait_s" in away.log_text()
    finally:
        away.close()
