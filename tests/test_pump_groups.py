"""Only configured sinks' groups hold trimming back (collector-pump as a real process tree).

A foreign consumer group (made by hand with ``XGROUP CREATE ... $``) no
longer stalls trimming: with a real daemon pushing back at a small
``max_backlog_bytes``, every record reaches the file sink and the stream
stays within the budget. ``respect_groups`` keeps another pump instance's
unread entries. ``collector-pump --prune-groups`` deletes foreign groups
after a confirmation. Records are counted by id: lost, unexpected, duplicated.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from collector.testing import (
    Daemon,
    Producers,
    Pump,
    RedisServer,
    account,
    clean_environ,
    console_script,
    jsonl_records,
    producer_ids,
    record_key,
    wait_until,
)

from .pump_plugins import ROOT, count_jsonl, produce, set_control

KEY = "collector:analytics"
FOREIGN = f'collector_pump_foreign_group_lag_entries{{group="oldsink",stream="{KEY}"}}'


def prune(pump: Pump, *args: str, answer: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*console_script("collector-pump"), "--config", str(pump.config),
                           "--prune-groups", *args], input=answer, capture_output=True,
                          text=True, timeout=60, env=clean_environ())


def test_foreign_group_does_not_stall_trimming_and_prune_deletes_it(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    n, count, budget, pool, batch = 2, 2_000, 128 << 10, 2, 20
    r = redis_server.client()
    r.xgroup_create(KEY, "oldsink", id="$", mkstream=True)  # a group nobody configured
    daemon = Daemon.write(tmp_path, redis_server.url, pool_size=pool, batch_size=batch,
                          max_backlog_bytes=budget).start()
    out = tmp_path / "file.jsonl"
    pump = Pump.write(tmp_path, redis_server.url, {"file": {"meta": {"path": str(out)}}},
                      trim_interval_s=0.1, log=tmp_path / "pump.log")
    try:
        pump.start()
        Producers.ring(rings_dir, n, count).start()
        longest = 0

        def delivered() -> bool:
            nonlocal longest
            longest = max(longest, int(r.memory_usage(KEY, samples=0) or 0))
            return out.exists() and sum(1 for _ in jsonl_records(out)) >= n * count
        wait_until(delivered, 120, "every record through the file sink", interval=0.05)
        seen = Counter(record_key(rec) for rec in jsonl_records(out))
        acc = account(seen, producer_ids(n, count))
        entry = 64 + batch * 500  # a batch of ~450-byte records and its entry's overhead
        print(f"foreign group: {acc}, largest stream {longest} bytes (budget {budget})")
        assert (acc.lost, acc.unexpected, acc.duplicated) == (0, 0, 0)
        # one entry over per flusher and the one that crosses, plus what Redis spends on
        # the stream itself (nodes, the groups and their pending lists)
        assert longest <= budget + (pool + 1) * entry + (32 << 10)
        assert daemon.metrics()["collector_daemon_backpressure_total"] > 0, \
            "the budget was never reached: the test shows nothing"
        assert pump.metrics()[FOREIGN] > 0  # the foreign group's lag, exported
        wait_until(lambda: pump.log_text().count("belongs to no configured sink") == 1, 10,
                   "the foreign group logged once")

        no = prune(pump, answer="n\n")
        assert no.returncode == 0 and "oldsink" in no.stdout and "Nothing deleted" in no.stdout
        assert "oldsink" in {g["name"].decode() for g in r.xinfo_groups(KEY)}
        yes = prune(pump, "--yes")
        assert yes.returncode == 0 and "Deleted 1 consumer group" in yes.stdout, yes.stderr
        assert {g["name"].decode() for g in r.xinfo_groups(KEY)} == {"file"}
        wait_until(lambda: FOREIGN not in pump.metrics(), 10, "the foreign group gone")
        assert "No foreign consumer groups" in prune(pump).stdout
        assert pump.stop() == 0 and daemon.stop() == 0
    finally:
        pump.close()
        daemon.close()


def jsonl_sink(tmp: Path, name: str, **control: Any) -> dict[str, Any]:
    ctl = tmp / f"{name}.ctl"
    set_control(ctl, **({"mode": "ok", "healthy": True} | control))
    return {"type": "testjsonl", "meta": {"path": str(tmp / f"{name}.jsonl"),
                                          "control": str(ctl)}}


def test_two_pump_instances_keep_each_others_unread_entries(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Instance A has sink ``a``, instance B sink ``b`` (down); each lists the other's
    sink in ``respect_groups``, so A's trimming keeps what B has not read."""
    r = redis_server.client()
    common = {"plugins": ["tests.pump_plugins"], "trim_interval_s": 0.1,
              "retry_max_ms": 100, "batch_deadline_s": 1}
    env = {"PYTHONPATH": str(ROOT)}
    a = Pump.write(tmp_path, redis_server.url, {"a": jsonl_sink(tmp_path, "a")}, name="a.yaml",
                   log=tmp_path / "a.log", env=env, respect_groups=["b"], **common)
    b = Pump.write(tmp_path, redis_server.url,
                   {"b": jsonl_sink(tmp_path, "b", mode="retryable", healthy=False)},
                   name="b.yaml", log=tmp_path / "b.log", env=env, respect_groups=["a"],
                   **common)
    try:
        b.start()
        a.start()
        expected = produce(r, 2000, per_entry=50)
        wait_until(lambda: len(count_jsonl(tmp_path / "a.jsonl")) == 2000, 60, "sink a")
        passes = a.metrics()["collector_pump_trim_passes_total"]
        wait_until(lambda: a.metrics()["collector_pump_trim_passes_total"] >= passes + 3, 30,
                   "A to trim after sink a took everything")
        assert r.xlen(KEY) == 40, "A trimmed entries B's sink has not taken"
        assert FOREIGN.replace("oldsink", "b") not in a.metrics(), "b is respected, not foreign"
        set_control(tmp_path / "b.ctl", mode="ok", healthy=True)
        wait_until(lambda: len(count_jsonl(tmp_path / "b.jsonl")) == 2000, 60, "sink b")
        wait_until(lambda: r.xlen(KEY) <= 1, 30, "trimming once both took everything")
        for name in ("a", "b"):
            acc = account(count_jsonl(tmp_path / f"{name}.jsonl"), expected)
            print(f"{name}: {acc}")
            assert (acc.lost, acc.unexpected) == (0, 0)
        assert a.stop() == 0 and b.stop() == 0
    finally:
        a.close()
        b.close()
