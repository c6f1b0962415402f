"""``collector config check|show``: both configs validated, effective values with their
sources, and no secret in any output (known test secrets in the file and the environment)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from collector.testing import console_script

SECRETS = {
    "redis_url_pw": "s3cret-in-url",
    "pump_redis_pw": "pump-redis-pw-77",
    "pg_pw": "pg-dsn-pw-42",
    "http_token": "Bearer tok-abc-123",
    "mongo_pw": "mongo-env-pw-9",
}


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    return subprocess.run([*console_script("collector"), "config", *args], capture_output=True,
                          text=True, timeout=60, env={**clean, **env, "COLUMNS": "200"})


def write(tmp: Path) -> tuple[Path, Path]:
    daemon = tmp / "collector.yaml"
    daemon.write_text(yaml.safe_dump({
        "redis_url": f"redis://user:{SECRETS['redis_url_pw']}@127.0.0.1:6390/0",
        "pool_size": 3, "rings_dir": str(tmp / "rings")}))
    pump = tmp / "pump.yaml"
    pump.write_text(yaml.safe_dump({
        "redis_url": "redis://127.0.0.1:6390/0", "read_count": 100,
        "pumps": {
            "pg": {"type": "postgres", "meta": {
                "dsn": f"host=127.0.0.1 dbname=x user=u password={SECRETS['pg_pw']}"}},
            "web": {"type": "http", "meta": {"url": "http://127.0.0.1:9/in",
                                             "auth_env": "WEB_TOKEN"}},
            "file": {"meta": {"path": str(tmp / "out.jsonl")}}}}))
    return daemon, pump


def test_show_redacts_every_secret_and_names_each_source(tmp_path: Path) -> None:
    daemon, pump = write(tmp_path)
    env = {"COLLECTOR_PUMP_REDIS_PASSWORD": SECRETS["pump_redis_pw"],
           "COLLECTOR_MONGO_PASSWORD": SECRETS["mongo_pw"],
           "WEB_TOKEN": SECRETS["http_token"],
           "COLLECTOR_BATCH_SIZE": "500", "COLLECTOR_PUMP_FILE_WORKERS": "2"}
    proc = run("show", "--daemon", str(daemon), "--pump", str(pump),
               "--set", "flush_interval_ms=50", env=env)
    out = proc.stdout + proc.stderr
    print(out)
    assert proc.returncode == 0, out
    for secret in SECRETS.values():
        assert secret not in out
    rows = {(x["service"], x["key"]): (x["value"], x["source"]) for x in json.loads(
        run("show", "--json", "--daemon", str(daemon), "--pump", str(pump),
            "--set", "flush_interval_ms=50", env=env).stdout)}
    assert rows[("daemon", "pool_size")] == ("3", "file")
    assert rows[("daemon", "batch_size")] == ("500", "env COLLECTOR_BATCH_SIZE")
    assert rows[("daemon", "flush_interval_ms")] == ("50.0", "flag")
    assert rows[("daemon", "scan_interval_ms")] == ("500.0", "default")
    assert rows[("daemon", "redis_url")] == ("redis://user:***@127.0.0.1:6390/0", "file")
    assert rows[("pump", "redis_password")] == ("***", "env COLLECTOR_PUMP_REDIS_PASSWORD")
    assert rows[("pump", "read_count")] == ("100", "file")
    assert rows[("pump", "pumps.file.workers")] == ("2", "env COLLECTOR_PUMP_FILE_WORKERS")
    assert rows[("pump", "pumps.pg.meta.dsn")][1] == "file"
    assert "password=***" in proc.stdout
    assert rows[("pump", "pumps.web.meta.auth_env")] == ("'WEB_TOKEN'", "file")
    assert rows[("pump", "pumps.pg.meta.table")][1] == "default"


def test_check_validates_both_files_and_the_environment(tmp_path: Path) -> None:
    daemon, pump = write(tmp_path)
    token = {"WEB_TOKEN": SECRETS["http_token"]}  # the http sink's auth_env must be set
    ok = run("check", "--daemon", str(daemon), "--pump", str(pump), env=token)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{daemon}: ok" in ok.stdout and f"{pump}: ok (3 sinks)" in ok.stdout
    bad = run("check", "--daemon", str(daemon), "--pump", str(pump),
              env={**token, "COLLECTOR_POOL_SIZ": "2", "COLLECTOR_PUMP_READ_COUNT": "zero"})
    assert bad.returncode == 2
    assert "COLLECTOR_POOL_SIZ: unknown variable" in bad.stderr
    assert "COLLECTOR_PUMP_READ_COUNT" in bad.stderr
    pump.write_text(pump.read_text().replace("read_count: 100", "purge_delay: 2"))
    renamed = run("check", "--daemon", str(daemon), "--pump", str(pump), env=token)
    assert renamed.returncode == 0 and "purge_delay" in renamed.stderr
    for secret in SECRETS.values():
        assert secret not in ok.stdout + ok.stderr + bad.stdout + bad.stderr


def test_show_hides_the_secret_parts_of_a_url_and_only_those(tmp_path: Path) -> None:
    token, pw = "qtok-31-zq", "pgurl-pw-58"
    daemon = tmp_path / "collector.yaml"
    daemon.write_text(yaml.safe_dump({"redis_url": "redis://127.0.0.1:6390/2"}))
    pump = tmp_path / "pump.yaml"
    pump.write_text(yaml.safe_dump({
        "redis_url": f"redis://:{SECRETS['pump_redis_pw']}@127.0.0.1:6390/0",
        "pumps": {"pg": {"type": "postgres", "meta": {
                      "dsn": f"postgresql://u:{pw}@127.0.0.1:5432/db?sslmode=disable"}},
                  "plain": {"type": "postgres"},
                  "web": {"type": "http", "meta": {
                      "url": f"http://127.0.0.1:9/in?token={token}&shard=a"}}}}))
    proc = run("show", "--json", "--daemon", str(daemon), "--pump", str(pump), env={})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for secret in (token, pw, SECRETS["pump_redis_pw"]):
        assert secret not in proc.stdout + proc.stderr
    rows = {(x["service"], x["key"]): x["value"] for x in json.loads(proc.stdout)}
    assert rows[("daemon", "redis_url")] == "redis://127.0.0.1:6390/2"  # no password: all
    assert rows[("pump", "redis_url")] == "redis://:***@127.0.0.1:6390/0"
    assert rows[("pump", "pumps.pg.meta.dsn")] == (
        "postgresql://u:***@127.0.0.1:5432/db?sslmode=disable")
    assert rows[("pump", "pumps.plain.meta.dsn")] == "dbname=collector"
    assert rows[("pump", "pumps.web.meta.url")] == "http://127.0.0.1:9/in?token=***&shard=a"
