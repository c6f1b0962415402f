"""``collector status`` against a real daemon, pump and redis-server, compared with known counts.

One stack for the module: a redis-server, ``collector-daemon`` and
``collector-pump`` with two sinks (the ``file`` sink and ``testjsonl`` from
``tests/pump_plugins.py``, whose health the test steers), and a ring this
test process writes into and keeps open (a live producer). The tests run in
order: the ready picture with its numbers, then degraded (a sink unhealthy,
``appendonly`` switched off), then unreachable (the pump stopped).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

import ringbuf
from collector.ops._sources import fetch_metrics
from collector.testing import (
    Daemon,
    Pump,
    RedisServer,
    account,
    authz_record,
    console_script,
    jsonl_lines,
    jsonl_records,
    producer_ids,
    record_key,
    wait_until,
)

from .pump_plugins import ROOT, count_jsonl, set_control

N = 3000
KEY = "collector:analytics"


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = RedisServer(tmp / "redis").start()
        self.daemon = Daemon.write(tmp, self.redis.url)
        self.ctl = tmp / "t.ctl"
        set_control(self.ctl, mode="ok", healthy=True)
        self.file_out = tmp / "file.jsonl"
        self.t_out = tmp / "t.jsonl"
        self.pump = Pump.write(tmp, self.redis.url, {
            "file": {"meta": {"path": str(self.file_out)}},
            "t": {"type": "testjsonl", "meta": {"path": str(self.t_out),
                                                "control": str(self.ctl)}}},
            plugins=["tests.pump_plugins"], env={"PYTHONPATH": str(ROOT)})
        self.writer: ringbuf.RingWriter | None = None

    def status(self, *args: str) -> tuple[int, str]:
        proc = subprocess.run(
            [*console_script("collector"), "status", "--daemon", str(self.daemon.config),
             "--pump", str(self.pump.config), "--interval", "0.2", *args],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"})
        assert not proc.stderr.strip() or proc.returncode in (0, 1, 2), proc.stderr
        return proc.returncode, proc.stdout

    def status_json(self) -> tuple[int, dict[str, Any]]:
        code, out = self.status("--json")
        return code, json.loads(out)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.pump.close()
        self.daemon.close()
        self.redis.kill()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("status"))
    try:
        s.daemon.start()
        s.pump.start()
        yield s
    finally:
        s.close()


def test_status_shows_the_known_counts_and_exits_0(stack: Stack) -> None:
    rings = Path(stack.daemon.config).parent / "rings"
    stack.writer = w = ringbuf.RingWriter.create(str(rings), capacity_bytes=4 << 20)  # no drop
    pack = msgpack.Packer(use_bin_type=True).pack
    for seq in range(N):
        assert w.try_write(pack(authz_record(0, seq)))
    r = stack.redis.client()
    r.xadd(KEY, {"junk": "not an entry"})  # one undecodable entry: a dead letter per sink
    wait_until(lambda: jsonl_lines(stack.file_out) >= N, 60, "file sink")
    wait_until(lambda: sum(count_jsonl(stack.t_out).values()) >= N, 60, "t sink")
    wait_until(lambda: all(r.xlen(f"{KEY}:dead:{s}") == 1 for s in ("file", "t")), 30,
               "the dead letters")
    acc = account([record_key(x) for x in jsonl_records(stack.file_out)], producer_ids(1, N))
    print(f"file sink: {acc}")
    assert acc.ok

    def settled() -> Any:
        code, doc = stack.status_json()
        sinks = doc["pump"]["sinks"]
        done = code == 0 and all(s["delivered"] == N and s["lag_entries"] == 0
                                 and s["pending_entries"] == 0 for s in sinks.values())
        return doc if done else None

    wait_until(lambda: r.xlen(KEY) <= 1, 30, "trimming below what both groups acknowledged")
    doc = wait_until(settled, 30, "status ready with every record delivered")
    spooling = "collector_pump_spool_bytes" in fetch_metrics(stack.pump.address, 5).names()
    assert doc["verdict"] == "ready" and doc["exit_code"] == 0 and doc["problems"] == []
    assert doc["schema"] == 1
    d = doc["daemon"]
    assert d["reachable"] and d["ready"] and d["records_written"] == N
    assert d["records_read"] == N and d["dropped"] == {"full": 0, "oversize": 0}
    assert len(d["flushers"]) == 2 and all(f["alive"] and not f["backing_off"]
                                           for f in d["flushers"])
    assert d["rates"]["interval_s"] == 0.2
    # the paths: the daemon's own (its metric) and this install's; the ring has no checksums
    assert d["ring_path"] == ringbuf.ring_path() and d["ring_path"] in ("native", "pure")
    assert doc["rings"]["local_path"] == ringbuf.ring_path()
    assert (doc["rings"]["local_path_why"] is None) == (ringbuf.ring_path() == "native")
    [ring] = doc["rings"]["rings"]
    assert ring["ring_id"] == w.ring_id and ring["producer_pid"] == os.getpid()
    assert ring["checksum"] is False
    assert ring["producer_alive"] and not ring["closed"]
    assert (ring["written"], ring["committed"], ring["pending"]) == (N, N, 0)
    red = doc["redis"]
    assert red["reachable"] and red["persistence"]["appendonly"] is True
    assert red["url"] == stack.redis.url
    [stream] = red["streams"]
    assert stream["key"] == KEY and stream["entries"] == r.xlen(KEY)
    assert stream["budget_entries"] is None and not stream["over_budget"]
    assert stream["budget_bytes"] == 256 << 20
    for name in ("file", "t"):
        s = doc["pump"]["sinks"][name]
        assert s["ready"] is True and s["why"] == []
        assert (s["delivered"], s["records_in"], s["lag_records"]) == (N, N, 0)
        assert s["dead_letters"] == 1 and s["dead_lettered"] == 1
        assert s["oldest_age_s"] is None and s["workers_alive"] == 1
        # a pump that exports collector_pump_spool_bytes: 0 (nothing spooled); else null
        assert s["spool_bytes"] == (0 if spooling else None)
    assert doc["warnings"] == [
        "sink file: 1 dead letters (collector dead-letters list --sink file)",
        "sink t: 1 dead letters (collector dead-letters list --sink t)"]

    code, text = stack.status()
    print(text)
    assert code == 0
    assert "collector status: ready (exit 0)" in text
    assert re.search(rf"written {N:,} records", text), text
    assert f"reads rings on the {ringbuf.ring_path()} path" in text, text
    assert f"writes on the {ringbuf.ring_path()} path" in text, text
    assert re.search(r"t \(testjsonl\)[\s│]+yes[\s│]+0[\s│]+0[\s│]+0[\s│]+-[\s│]+3,000", text), text


def test_status_degraded_and_unreachable(stack: Stack) -> None:
    # CONFIG SET appendonly fsyncs and stops the append-only file: longer than
    # redis-py's 5 s default socket timeout on a loaded machine
    r = stack.redis.client(socket_timeout=60)
    set_control(stack.ctl, mode="ok", healthy=False)
    r.config_set("appendonly", "no")
    code, doc = wait_until(lambda: (c := stack.status_json())[0] == 1 and c, 30, "degraded")
    assert doc["verdict"] == "degraded"
    t, f = doc["pump"]["sinks"]["t"], doc["pump"]["sinks"]["file"]
    assert t["ready"] is False and "RetryableError: told to be unhealthy" in t["why"]
    assert f["ready"] is True
    assert "pump: not ready" in doc["problems"]
    assert any("sink t: not ready" in p for p in doc["problems"])
    assert any("appendonly is off" in w for w in doc["warnings"])
    assert doc["redis"]["persistence"]["appendonly"] is False
    code, text = stack.status()
    assert code == 1 and "collector status: degraded (exit 1)" in text
    assert "told to be unhealthy" in text and "appendonly is off" in text
    r.config_set("appendonly", "yes")
    set_control(stack.ctl, mode="ok", healthy=True)

    assert stack.pump.stop() == 0
    code, doc = stack.status_json()
    assert code == 2 and doc["verdict"] == "unreachable"
    assert doc["pump"]["reachable"] is False and doc["daemon"]["reachable"] is True
    assert any(p.startswith("pump: unreachable") for p in doc["problems"])
    code, text = stack.status()
    assert code == 2 and "collector status: unreachable (exit 2)" in text


def _paths(obj: Any, prefix: str = "") -> set[str]:
    """Every key path of a status document (``a.b``, ``a[].b``, ``pump.sinks.<name>.x``)."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = "<name>" if prefix == "pump.sinks" else k
            p = f"{prefix}.{key}" if prefix else key
            out.add(p)
            out |= _paths(v, p)
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        for item in obj:
            out |= _paths(item, prefix + "[]")
    return out


def test_the_json_schema_in_the_readme_is_the_documents(stack: Stack) -> None:
    """Every key of a real document is in the README's schema table, and nothing else is."""
    stack.pump.start()
    _, doc = stack.status_json()
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### `collector status --json`", 1)[1].split("\n#", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))
    found = _paths(doc)
    # a ring that failed to open has only path and error: documented under the same keys
    assert found <= documented, f"not in the README: {sorted(found - documented)}"
    assert documented <= found, f"in the README but not produced: {sorted(documented - found)}"
