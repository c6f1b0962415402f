"""collector-pump as a real process tree (supervisor + spawned workers) on a real Redis.

Records carry a ``seq``; every test reports lost and duplicated ones. The
``testjsonl`` sink (tests/pump_plugins.py, loaded by the workers through
``plugins:``) appends one JSON line per record and is steered through a
control file, so failures and blocked writes happen inside real workers.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from collector.testing import (
    Pump,
    RedisServer,
    account,
    drop_tables,
    pg_dsn,
    wait_until,
)
from pump.sinks import registry

from .pump_plugins import ROOT, count_jsonl, produce, set_control

KEY = "collector:analytics"


_PUMPS = itertools.count()


def make_pump(tmp: Path, redis_server: RedisServer, pumps: dict[str, Any],
              **extra: Any) -> Pump:
    """The pump of these tests: ``testjsonl`` loaded from ``tests/`` by every worker."""
    return Pump.write(tmp, redis_server.url, pumps, name=f"pump-{next(_PUMPS)}.yaml",
                      log=tmp / "pump.log", env={"PYTHONPATH": str(ROOT)},
                      **{"plugins": ["tests.pump_plugins"], "read_count": 20, **extra})


@pytest.fixture
def pumps() -> Any:
    started: list[Pump] = []

    def make(*args: Any, **kw: Any) -> Pump:
        p = make_pump(*args, **kw)
        started.append(p)
        return p

    yield make
    for p in started:
        p.close()  # also workers left without their supervisor


def jsonl(tmp: Path, name: str, **control: Any) -> dict[str, Any]:
    ctl = tmp / f"{name}.ctl"
    set_control(ctl, **({"mode": "ok", "healthy": True} | control))
    return {"type": "testjsonl", "timeout_s": 30,
            "meta": {"path": str(tmp / f"{name}.jsonl"), "control": str(ctl)}}


def report(name: str, counts: Any, expected: list[int]) -> tuple[int, int]:
    acc = account(counts, expected)
    print(f"{name}: {acc}")
    return acc.lost, acc.duplicated


def test_two_sinks_exactly_once_metrics_and_sigterm(tmp_path: Path, redis_server: RedisServer,
                                                    pumps: Any) -> None:
    assert "file" in registry(), "the file sink (pump/sinks/file.py) is needed here"
    r = redis_server.client()
    expected = produce(r, 20_000, per_entry=100)
    spec = {"t": {**jsonl(tmp_path, "t"), "workers": 2},
            "file": {"workers": 2, "meta": {"path": str(tmp_path / "file.jsonl")}}}
    pump = pumps(tmp_path, redis_server, spec).start()
    expected += produce(r, 10_000, per_entry=100, start=20_000)
    wait_until(lambda: sum(count_jsonl(tmp_path / "t.jsonl").values()) >= 30_000, 120, "t")
    wait_until(lambda: sum(count_jsonl(tmp_path / "file.jsonl", "_id").values()) >= 30_000,
               120, "file")
    wait_until(lambda: pump.get_json("/readyz")[0] == 200, 30, "ready")
    assert pump.get_json("/healthz") == (200, {"status": "ok"})
    _, ready = pump.get_json("/readyz")
    assert ready["redis"]["ok"] and ready["sinks"]["t"]["workers_alive"] == 2
    wait_until(lambda: 'collector_pump_records_out_total{sink="file"} 30000.0'
               in pump.metrics_text(), 30, "metrics")
    metrics = pump.metrics_text()
    for line in ('collector_pump_records_out_total{sink="t"} 30000.0',
                 'collector_pump_records_in_total{sink="t"} 30000.0',
                 'collector_pump_workers_alive{sink="file"} 2.0',
                 'collector_pump_group_lag_entries{sink="t",stream="collector:analytics"} 0.0',
                 'collector_pump_write_seconds_count{sink="t"}',
                 'collector_pump_records_dead_lettered_total{sink="t"} 0.0'):
        assert line in metrics, line
    wait_until(lambda: r.xlen(KEY) <= 2, 30, "trimming of acknowledged entries")
    assert pump.stop() == 0
    assert report("t", count_jsonl(tmp_path / "t.jsonl"), expected) == (0, 0)
    file_ids = count_jsonl(tmp_path / "file.jsonl", "_id")
    file_seqs = {int(k.rsplit(":", 1)[1]): v for k, v in file_ids.items()}
    assert report("file", file_seqs, expected) == (0, 0)
    for group in ("t", "file"):
        assert r.xpending(KEY, group)["pending"] == 0


def test_kill_9_worker_mid_batch_and_whole_pump_lose_nothing(
        tmp_path: Path, redis_server: RedisServer, pumps: Any) -> None:
    r = redis_server.client()
    spec = {"t": jsonl(tmp_path, "t", mode="block_after_write")}
    ctl, out = tmp_path / "t.ctl", tmp_path / "t.jsonl"
    marker = Path(str(out) + ".inflight")
    pump = pumps(tmp_path, redis_server, spec).start()
    expected = produce(r, 1000, per_entry=50)

    # 1. a worker killed after its sink wrote, before the ack
    wait_until(marker.exists, 60, "a write in flight")
    pid = int(marker.read_text())
    os.kill(pid, signal.SIGKILL)
    marker.unlink()
    set_control(ctl, mode="ok", healthy=True)
    wait_until(lambda: set(count_jsonl(out)) >= set(expected), 60, "redelivery after kill -9")
    wait_until(lambda: r.xpending(KEY, "t")["pending"] == 0, 60, "all acknowledged")
    lost, dups = report("after worker kill", count_jsonl(out), expected)
    assert lost == 0 and dups > 0  # the killed batch was written, not acknowledged
    assert pump.get_json("/readyz")[1]["sinks"]["t"]["workers_alive"] == 1
    metrics = pump.metrics_text()
    assert 'collector_pump_worker_restarts_total{sink="t"} 1.0' in metrics

    # 2. the whole process tree killed mid-batch, then started again
    set_control(ctl, mode="block_after_write", healthy=True)
    expected += produce(r, 1000, per_entry=50, start=1000)
    wait_until(marker.exists, 60, "a write in flight")
    pump.kill_all()
    marker.unlink()
    set_control(ctl, mode="ok", healthy=True)
    pump.start()
    wait_until(lambda: set(count_jsonl(out)) >= set(expected), 60, "redelivery after restart")
    wait_until(lambda: r.xpending(KEY, "t")["pending"] == 0, 30, "all acknowledged")
    lost, dups = report("after pump kill", count_jsonl(out), expected)
    assert lost == 0
    assert pump.stop() == 0


def test_failing_sink_does_not_hold_back_the_other_and_drains_after(
        tmp_path: Path, redis_server: RedisServer, pumps: Any) -> None:
    r = redis_server.client()
    spec = {"bad": jsonl(tmp_path, "bad", mode="retryable", healthy=False),
            "good": jsonl(tmp_path, "good")}
    pump = pumps(tmp_path, redis_server, spec, max_lag_entries=5, batch_deadline_s=1).start()
    expected = produce(r, 2000, per_entry=50)
    good = tmp_path / "good.jsonl"
    wait_until(lambda: len(count_jsonl(good)) == 2000, 60, "the healthy sink")
    code, ready = pump.get_json("/readyz")
    assert code == 503 and not ready["ready"]
    assert not ready["sinks"]["bad"]["healthy"] and "told to be unhealthy" in ready["sinks"][
        "bad"]["error"]
    assert ready["sinks"]["good"]["ready"]
    expected += produce(r, 2000, per_entry=50, start=2000)
    wait_until(lambda: len(count_jsonl(good)) == 4000, 60, "the healthy sink, again")
    wait_until(lambda: r.xinfo_groups(KEY) and all(
        g["lag"] == 0 and g["pending"] == 0 for g in r.xinfo_groups(KEY)
        if g["name"] == b"good"), 30, "the healthy group's lag to stay at 0")
    assert r.xlen(KEY) == 80, "entries the failing sink still needs were trimmed"
    wait_until(lambda: 'collector_pump_workers_in_outage{sink="bad"} 1.0'
               in pump.metrics_text(), 30, "the outage gauge")
    set_control(tmp_path / "bad.ctl", mode="ok", healthy=True)
    wait_until(lambda: len(count_jsonl(tmp_path / "bad.jsonl")) == 4000, 60, "the backlog")
    wait_until(lambda: pump.get_json("/readyz")[0] == 200, 30, "ready again")
    assert r.xlen(f"{KEY}:dead:bad") == 0, "an outage must not dead-letter"
    for name in ("bad", "good"):
        lost, dups = report(name, count_jsonl(tmp_path / f"{name}.jsonl"), expected)
        assert lost == 0 and dups == 0

    redis_server.kill()
    code, ready = pump.get_json("/readyz")
    assert code == 503 and ready["redis"]["ok"] is False
    redis_server.start()
    assert pump.stop() == 0


def test_sigterm_finishes_and_acks_the_batch_in_flight(
        tmp_path: Path, redis_server: RedisServer, pumps: Any) -> None:
    r = redis_server.client()
    spec = {"t": jsonl(tmp_path, "t", mode="block_before_write")}
    out = tmp_path / "t.jsonl"
    pump = pumps(tmp_path, redis_server, spec, read_count=100).start()
    expected = produce(r, 500, per_entry=50)
    wait_until(Path(str(out) + ".inflight").exists, 60, "a write in flight")
    pump.signal(signal.SIGTERM)
    wait_until(lambda: pump.get_json("/readyz")[1]["status"] == "stopping", 30, "stopping")
    set_control(tmp_path / "t.ctl", mode="ok", healthy=True)
    assert pump.wait(60) == 0
    counts = count_jsonl(out)
    assert len(counts) == 500 and max(counts.values()) == 1
    assert r.xpending(KEY, "t")["pending"] == 0, "the in-flight batch was not acknowledged"
    report("sigterm", counts, expected)


def test_a_write_that_ignores_its_deadline_gets_its_worker_killed(
        tmp_path: Path, redis_server: RedisServer, pumps: Any) -> None:
    r = redis_server.client()
    spec = {"t": {**jsonl(tmp_path, "t", mode="block_before_write", ignore_deadline=True),
                  "timeout_s": 0.5}}
    out = tmp_path / "t.jsonl"
    pump = pumps(tmp_path, redis_server, spec, stuck_write_grace_s=1).start()
    expected = produce(r, 200, per_entry=50)
    wait_until(lambda: 'collector_pump_worker_restarts_total{sink="t"} 1.0'
               in pump.metrics_text(), 60, "the watchdog to kill the stuck worker")
    set_control(tmp_path / "t.ctl", mode="ok", healthy=True)
    wait_until(lambda: len(count_jsonl(out)) == 200, 60, "redelivery")
    wait_until(lambda: r.xpending(KEY, "t")["pending"] == 0, 30, "all acknowledged")
    assert report("watchdog", count_jsonl(out), expected)[0] == 0
    assert "overran its deadline" in pump.log.read_text()
    assert pump.stop() == 0


def test_kill_9_with_postgres_and_file_sinks(tmp_path: Path, redis_server: RedisServer,
                                             pumps: Any) -> None:
    """PostgreSQL deduplicates redeliveries by record id; the file sink cannot (counted)."""
    psycopg = pytest.importorskip("psycopg")

    table = f"pump_kill_{os.getpid()}"
    drop_tables(table)

    def pg_count() -> int:
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            if not exists or exists[0] is None:
                return 0
            row = conn.execute(f"SELECT count(*), count(DISTINCT id) FROM {table}").fetchone()
            assert row is not None and row[0] == row[1]
            return int(row[0])

    r = redis_server.client()
    spec = {"pg": {"type": "postgres", "workers": 2, "meta": {"dsn": pg_dsn(), "table": table}},
            "file": {"meta": {"path": str(tmp_path / "file.jsonl")}}}
    pump = pumps(tmp_path, redis_server, spec, read_count=5).start()
    expected = produce(r, 20_000, per_entry=100)
    try:
        wait_until(lambda: pg_count() > 0, 60, "the first rows in PostgreSQL")
        pump.kill_all()
        pump.start()
        wait_until(lambda: pg_count() >= 20_000, 120, "every row in PostgreSQL")
        wait_until(lambda: all(r.xpending(KEY, g)["pending"] == 0 for g in ("pg", "file"))
                   and all(g["lag"] == 0 for g in r.xinfo_groups(KEY)), 60, "all acknowledged")
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            seqs = Counter(int(row[0].rsplit(":", 1)[1])
                           for row in conn.execute(f"SELECT id FROM {table}"))
        assert report("postgres", seqs, expected) == (0, 0)
        file_ids = count_jsonl(tmp_path / "file.jsonl", "_id")
        lost, _ = report("file", Counter({int(k.rsplit(":", 1)[1]): v
                                          for k, v in file_ids.items()}), expected)
        assert lost == 0
        assert pump.stop() == 0
    finally:
        drop_tables(table)


def test_list_source_drains_the_seeds_list(tmp_path: Path, redis_server: RedisServer,
                                           pumps: Any) -> None:
    from .pump_plugins import make_record

    r = redis_server.client()
    r.rpush("analytics-iam-system-analytics", *[make_record(s) for s in range(3000)])
    pump = pumps(tmp_path, redis_server, {"t": jsonl(tmp_path, "t")},
                 source={"type": "list", "list_batch_size": 500}).start()
    out = tmp_path / "t.jsonl"
    wait_until(lambda: len(count_jsonl(out)) == 3000, 60, "records from the list")
    assert r.llen("analytics-iam-system-analytics") == 0
    assert pump.stop() == 0
    assert report("list", count_jsonl(out), list(range(3000))) == (0, 0)


def test_second_signal_exits_at_once(tmp_path: Path, redis_server: RedisServer,
                                     pumps: Any) -> None:
    import psutil

    r = redis_server.client()
    spec = {"t": jsonl(tmp_path, "t", mode="block_before_write", ignore_deadline=True)}
    pump = pumps(tmp_path, redis_server, spec).start()
    produce(r, 100, per_entry=50)
    marker = tmp_path / "t.jsonl.inflight"
    wait_until(marker.exists, 60, "a write in flight")
    worker = psutil.Process(int(marker.read_text()))
    pump.signal(signal.SIGTERM)
    wait_until(lambda: pump.get_json("/readyz")[1]["status"] == "stopping", 30, "stopping")
    pump.signal(signal.SIGINT)
    assert pump.wait(30) == 1
    worker.wait(10)  # killed with the supervisor, not left behind
    assert r.xpending(KEY, "t")["pending"] > 0  # unacknowledged: redelivered on next start


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_a_sinks_log_line_appears_in_the_pumps_log_format(
        tmp_path: Path, redis_server: RedisServer, pumps: Any, fmt: str) -> None:
    """The file sink's torn-line warning (logger ``pump.sinks.file``) comes out of the
    worker's stderr in the pump's ``log_format``, not through Python's last-resort
    handler; the records still arrive exactly once."""
    out, torn = tmp_path / "file.jsonl", b'{"_id": "torn'
    out.write_bytes(b'{"_id": "old:1", "seq": -1}\n' + torn)  # a writer died mid-line
    expected = produce(redis_server.client(), 50, per_entry=10)
    pump = pumps(tmp_path, redis_server, {"file": {"meta": {"path": str(out)}}},
                 log_format=fmt).start()
    wait_until(lambda: sum(count_jsonl(out, "_id").values()) >= 51, 60, "the file sink")
    assert pump.stop() == 0
    file_seqs = {int(k.rsplit(":", 1)[1]): v for k, v in count_jsonl(out, "_id").items()
                 if k != "old:1"}
    assert report("file", file_seqs, expected) == (0, 0)
    lines = [line for line in pump.log.read_text().splitlines() if "partial last line" in line]
    assert len(lines) == 1, pump.log.read_text()[-3000:]
    if fmt == "json":
        event = json.loads(lines[0])
        assert event["logger"] == "pump.sinks.file" and event["level"] == "warning"
        assert event["proc"] == "worker-file-0" and event["bytes"] == len(torn)
        assert event["msg"].startswith("Cut a partial last line") and "ts" in event
    else:
        assert lines[0].startswith("ts=")
        assert " level=warning proc=worker-file-0 logger=pump.sinks.file " in lines[0]
        assert f" bytes={len(torn)}" in lines[0]
