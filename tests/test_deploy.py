"""The deploy kit (``deploy/``): systemd units, Prometheus rules, the Grafana dashboard.

The units are checked by ``systemd-analyze verify`` (with ``ExecStart``
pointing at this installation's scripts) and their environment file by both
services' config loaders. The rules are checked by ``promtool check rules``
and then loaded by a real Prometheus server (Debian's ``prometheus``) that
scrapes a real daemon and pump every 200 ms: the test causes what each rule
is for (records dropped in a ring, a sink in outage with an old backlog over
its lag threshold, a dead letter, the stream over the daemon's budget) and
waits until every alert is pending or firing. The dashboard's and the rules'
metric names, and the README's table of metrics, are compared with what the
services export.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import yaml

import ringbuf
from collector.common.stream import encode_entry
from collector.config import load_config as load_daemon_config
from collector.ops._sources import Metrics
from collector.testing import (
    Daemon,
    Prometheus,
    Pump,
    RedisServer,
    authz_record,
    console_script,
    fill_stream,
    wait_until,
)
from pump.config import load_config as load_pump_config

from .pump_plugins import ROOT, set_control

DEPLOY = ROOT / "deploy"
KEY = "collector:analytics"
RULES = DEPLOY / "prometheus" / "collector-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "collector-dashboard.json"


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def test_systemd_units_verify_and_keep_the_rings_working(tmp_path: Path) -> None:
    env = tmp_path / "collector.env"
    shutil.copy(DEPLOY / "systemd" / "collector.env", env)
    units = []
    for name, script in (("collector-daemon", "collector-daemon"),
                         ("collector-pump", "collector-pump")):
        text = (DEPLOY / "systemd" / f"{name}.service").read_text()
        assert f"ExecStart=/opt/collector/.venv/bin/{script} " in text
        assert "EnvironmentFile=/etc/collector/collector.env" in text
        assert "User=collector" in text and "NoNewPrivileges=yes" in text
        text = text.replace(f"/opt/collector/.venv/bin/{script}", console_script(script)[0])
        text = text.replace("/etc/collector/collector.env", str(env))
        unit = tmp_path / f"{name}.service"
        unit.write_text(text)
        units.append(unit)
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    proc = subprocess.run(["systemd-analyze", "verify", *map(str, units)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), (
        proc.stdout + proc.stderr)
    daemon = units[0].read_text()
    # the rings are the host's /dev/shm, shared with the apps: no private /dev, no IPC removal
    for line in ("PrivateDevices=no", "RemoveIPC=no", "ReadWritePaths=/dev/shm",
                 "ProtectSystem=strict", "RuntimeDirectory=collector"):
        assert re.search(rf"^{re.escape(line)}$", daemon, flags=re.M), line
    # one environment file for both: each service accepts every variable in it
    environ = env_file(env)
    cfg = load_daemon_config(None, environ=environ)
    assert cfg.runtime_dir == "/var/lib/collector"
    pump = load_pump_config({"pumps": {"null": {}}}, environ=environ)
    assert pump.effective_redis_url() == "unix:///var/lib/collector/redis.sock"


def test_promtool_checks_the_rules_and_the_example_config() -> None:
    proc = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout + proc.stderr
    proc = subprocess.run(["promtool", "check", "config",
                           str(DEPLOY / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class Stack:
    """redis-server, a daemon with a small backlog budget, a pump with a sink that
    can be put in outage, and a Prometheus scraping both with the deploy rules."""

    def __init__(self, tmp: Path) -> None:
        self.redis = RedisServer(tmp / "redis").start()
        self.daemon = Daemon.write(tmp, self.redis.url, max_backlog_bytes=64 << 10)
        self.ctl = tmp / "t.ctl"
        set_control(self.ctl, mode="ok", healthy=True)
        self.pump = Pump.write(tmp, self.redis.url, {
            # no spool: its backlog stays in Redis (the pump follows the daemon's 64 KiB
            # budget, and a spool would move it out before the lag alerts fire)
            "t": {"type": "testjsonl", "spool_max_bytes": 0,
                  "meta": {"path": str(tmp / "t.jsonl"), "control": str(self.ctl)}},
            "null": {}}, plugins=["tests.pump_plugins"], env={"PYTHONPATH": str(ROOT)},
            max_lag_entries=1_000_000)
        self.prom = Prometheus(tmp / "prometheus", {
            "collector-daemon": [self.daemon.address], "collector-pump": [self.pump.address]},
            rule_files=[RULES], interval_s=0.2)

    def close(self) -> None:
        self.prom.close()
        self.pump.close()
        self.daemon.close()
        self.redis.kill()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("deploy"))
    try:
        s.daemon.start()
        s.pump.start()
        s.prom.start()
        wait_until(s.prom.scraped, 30, "prometheus to scrape the daemon and the pump")
        yield s
    finally:
        s.close()


def test_every_rule_fires_on_what_it_is_for(stack: Stack) -> None:
    prom = stack.prom
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    for rule in rules:  # every expression runs (an empty result is no alert yet)
        prom.query(rule["expr"])
    assert prom.alerts() == {}, "nothing is wrong yet"
    r = stack.redis.client()
    pack = msgpack.Packer(use_bin_type=True).pack
    # the sink t in outage: it stops acknowledging, while a backlog an hour old waits for it
    set_control(stack.ctl, mode="retryable", healthy=False)
    old_ms = int(time.time() * 1000) - 3_600_000
    r.xadd(KEY, encode_entry("c" * 32, 0, [pack(authz_record(9, 0))]), id=f"{old_ms}-0")
    r.xadd(KEY, {"junk": "not an entry"})  # undecodable: a dead letter at each sink
    # records dropped: a ring far too small for a burst of records
    rings = Path(stack.daemon.config).parent / "rings"
    w = ringbuf.RingWriter.create(str(rings), capacity_bytes=4096, max_record_bytes=1024)
    dropped = sum(1 for seq in range(200) if not w.try_write(pack(authz_record(0, seq))))
    w.close()
    assert dropped > 0
    fill_stream(r, 10_100, per_entry=1)  # lag over 10,000 and the stream over its budget
    wanted = {rule["alert"] for rule in rules}
    seen: dict[str, str] = {}

    def all_active() -> bool:
        seen.clear()
        seen.update(prom.alerts())
        return set(seen) >= wanted

    try:
        wait_until(all_active, 60, "every alert pending or firing")
    except AssertionError:
        raise AssertionError(f"active: {seen}; missing: {sorted(wanted - set(seen))}; "
                             f"pump log: {stack.pump.log_text()[-2000:]}") from None
    states = prom.alerts()
    print(f"alerts: {states}")
    # those without a for: fire at once
    for name in ("CollectorRecordsDroppedAtProducers", "CollectorDeadLettersGrowing"):
        assert states[name] == "firing", name
    wait_until(lambda: [float(x["value"][1]) for x in prom.query(
        'sum(collector_daemon_dropped_records_total{cause="full"})')] == [dropped], 30,
        "prometheus to count the records dropped in the ring")
    [age] = prom.query('collector_pump_group_oldest_age_seconds{sink="t"}')
    assert float(age["value"][1]) >= 3600
    set_control(stack.ctl, mode="ok", healthy=True)


def _exported(*texts: str) -> set[str]:
    """Every series name the texts expose (a counter's ``_total``, a histogram's parts)."""
    names: set[str] = set()
    from prometheus_client.parser import text_string_to_metric_families

    for text in texts:
        for fam in text_string_to_metric_families(text):
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            names |= {fam.name + s for s in suffixes.get(fam.type, [""])}
            names |= {s.name for s in fam.samples}
    return names


def _queried(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in re.findall(r"\bcollector_[a-z0-9_]+\b", e)}


def test_dashboard_rules_and_readme_name_only_exported_metrics(stack: Stack) -> None:
    texts = [stack.daemon.metrics_text(), stack.pump.metrics_text()]
    exported = _exported(*texts)
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs and _queried(exprs) <= exported, sorted(_queried(exprs) - exported)
    for p in dash["panels"]:  # every panel's query runs on the real server
        for t in p["targets"]:
            stack.prom.query(t["expr"].replace("$__rate_interval", "1m")
                             .replace('{instance=~"$instance"}', "")
                             .replace(',instance=~"$instance"', "")
                             .replace('instance=~"$instance",', ""))
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert _queried([r["expr"] for r in rules]) <= exported
    # the README's table names exactly the families the services export
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Metrics", 1)[1].split("\n#", 1)[0]
    documented = set(re.findall(r"^\| `(collector_[a-z0-9_]+)` \|", section, flags=re.M))
    families: dict[str, str] = {}
    from prometheus_client.parser import text_string_to_metric_families

    for text in texts:
        for fam in text_string_to_metric_families(text):
            name = fam.name + ("_total" if fam.type == "counter" else "")
            families[name] = fam.type
    assert documented == set(families), (
        f"undocumented: {sorted(set(families) - documented)}; "
        f"not exported: {sorted(documented - set(families))}")
    # conventions: counters end in _total, histograms in a base unit, gauges never in _total
    for name, kind in families.items():
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name
        elif kind == "gauge":
            assert not name.endswith("_total"), name
        assert not re.search(r"_(ms|milliseconds|kb|mb|minutes)(_|$)", name), name
    assert Metrics(texts[0]).get("collector_daemon_ready") == 1.0
