"""The pump spools against the daemon's budget without being told it.

A real daemon publishes its ``max_backlog_bytes`` next to the stream
(``<stream>:budget``, collector/common/budget.py); a real pump without
``max_backlog_bytes`` follows it (a sink that is down spools under the
daemon's 256 KiB, where the pump's own default would be 256 MiB), follows a
change when the daemon is restarted with another value, and falls back to the
default while no daemon publishes one. A pump that sets ``max_backlog_bytes``
uses its own and shows the difference in ``/metrics`` and once in its log.
Records are counted by id at the end: nothing lost on the way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collector.common.budget import budget_key, read_budgets
from collector.testing import (
    Daemon,
    Producers,
    Pump,
    RedisServer,
    account,
    wait_until,
)

from .pump_plugins import ROOT, count_jsonl, set_control

KEY = "collector:analytics"
MISMATCH = "differs from the daemon's"


def budget_metrics(pump: Pump) -> dict[str, float]:
    m = pump.metrics()
    return {k.removeprefix("collector_pump_"): v for k, v in m.items()
            if "backlog_budget" in k}


def daemon_config(tmp: Path, redis_server: RedisServer, budget: int) -> Daemon:
    return Daemon.write(tmp, redis_server.url, batch_size=50, max_backlog_bytes=budget,
                        ring_capacity_bytes=8 << 20, log=tmp / "daemon.log")


def test_the_pump_follows_the_daemons_budget_and_its_own_setting_wins_visibly(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    r = redis_server.client()
    ctl, out = tmp_path / "t.ctl", tmp_path / "t.jsonl"
    set_control(ctl, mode="retryable", healthy=False)  # down: its group lags
    sinks: dict[str, Any] = {"t": {"type": "testjsonl", "timeout_s": 5,
                                   "meta": {"path": str(out), "control": str(ctl)}}}
    common = {"env": {"PYTHONPATH": str(ROOT)}, "plugins": ["tests.pump_plugins"],
              "read_count": 5, "trim_interval_s": 0.1, "max_deliveries": 1000,
              # one instance name: the second pump drains the first one's spool
              "instance_name": "budget-test"}
    daemon = daemon_config(tmp_path, redis_server, 256 << 10)
    pump = Pump.write(tmp_path, redis_server.url, sinks, log=tmp_path / "pump.log", **common)
    explicit = Pump.write(tmp_path, redis_server.url, sinks, name="explicit.yaml",
                          log=tmp_path / "explicit.log", max_backlog_bytes=2 << 20, **common)
    try:
        daemon.start()
        wait_until(lambda: list(read_budgets(r, KEY).values()) == [256 << 10], 30,
                   "the daemon's budget in Redis")
        pump.start()
        wait_until(lambda: budget_metrics(pump) == {
            'backlog_budget_bytes{source="daemon"}': 256 << 10,
            "daemon_backlog_budget_bytes": 256 << 10, "backlog_budget_mismatch": 0.0},
            30, "the pump following the daemon's budget")
        assert "Following the daemon's backlog budget." in pump.log_text()
        # the sink is down: its group spools at half of the daemon's 256 KiB
        count = 4000  # ~1.8 MB of records
        drops = Producers.analytics(daemon.config, 1, count).start().join()
        assert drops == 0
        wait_until(lambda: pump.metrics().get(
            'collector_pump_records_spooled_total{sink="t"}', 0) > 0, 60, "spooling")

        # the daemon stops (its field goes) and comes back with another budget
        assert daemon.stop() == 0
        assert r.hlen(budget_key(KEY)) == 0
        wait_until(lambda: budget_metrics(pump).get(
            'backlog_budget_bytes{source="default"}') == 256 << 20, 30, "the default")
        assert "No daemon has published its backlog budget yet" in pump.log_text()
        daemon = daemon_config(tmp_path, redis_server, 1 << 20)
        daemon.start()
        wait_until(lambda: budget_metrics(pump).get(
            'backlog_budget_bytes{source="daemon"}') == 1 << 20, 30, "the new budget")
        assert pump.log_text().count("Following the daemon's backlog budget.") == 2
        assert MISMATCH not in pump.log_text()
        assert pump.stop() == 0

        # a pump that sets its own: it wins, /metrics shows both, the log says it once
        explicit.start()
        wait_until(lambda: budget_metrics(explicit) == {
            'backlog_budget_bytes{source="config"}': 2 << 20,
            "daemon_backlog_budget_bytes": 1 << 20, "backlog_budget_mismatch": 1.0},
            30, "the pump's own budget beside the daemon's")
        assert explicit.log_text().count(MISMATCH) == 1
        assert daemon.stop() == 0  # the same daemon value again: not said twice
        wait_until(lambda: "daemon_backlog_budget_bytes" not in budget_metrics(explicit), 30,
                   "the daemon's budget gone")
        daemon.start()
        wait_until(lambda: budget_metrics(explicit).get("backlog_budget_mismatch") == 1.0,
                   30, "the mismatch again")
        assert explicit.log_text().count(MISMATCH) == 1

        # the sink comes back: every record, from the spool and the stream
        set_control(ctl, mode="ok", healthy=True)
        everything = range(count)  # one producer: its seq numbers (testjsonl keeps those)
        wait_until(lambda: set(count_jsonl(out)) >= set(everything), 60,
                   "every record at the sink")
        acc = account(count_jsonl(out), everything)
        print(f"budget test: {acc}")
        assert (acc.lost, acc.unexpected) == (0, 0)
        assert explicit.stop() == 0 and daemon.stop() == 0
    finally:
        pump.close()
        explicit.close()
        daemon.close()


def test_a_stream_filling_up_is_trimmed_before_the_interval(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    """trim_interval_s an hour: only the trims a filling stream asks for (a quarter of
    the daemon's 256 KiB) let 6,000 records (~2.7 MB) through, every one of them."""
    ctl, out = tmp_path / "t.ctl", tmp_path / "t.jsonl"
    set_control(ctl, mode="ok", healthy=True)
    daemon = daemon_config(tmp_path, redis_server, 256 << 10)
    pump = Pump.write(tmp_path, redis_server.url,
                      {"t": {"type": "testjsonl", "meta": {"path": str(out),
                                                           "control": str(ctl)}}},
                      log=tmp_path / "pump.log", env={"PYTHONPATH": str(ROOT)},
                      plugins=["tests.pump_plugins"], trim_interval_s=3600)
    count = 6000
    try:
        daemon.start()
        pump.start()
        assert Producers.analytics(daemon.config, 1, count).start().join() == 0
        wait_until(lambda: set(count_jsonl(out)) >= set(range(count)), 120,
                   "every record at the sink")
        acc = account(count_jsonl(out), range(count))
        trimmed = pump.metrics()["collector_pump_trimmed_entries_total"]
        print(f"filling stream: {acc}, {trimmed:.0f} entries trimmed")
        assert (acc.lost, acc.unexpected) == (0, 0) and trimmed > 0
        assert daemon.metrics()["collector_daemon_backpressure_total"] > 0, \
            "the budget was never reached: the test shows nothing"
        assert pump.stop() == 0 and daemon.stop() == 0
    finally:
        pump.close()
        daemon.close()
