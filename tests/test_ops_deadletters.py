"""``collector dead-letters`` on a real pump: a poison record dead-lettered, listed, shown,
replayed to its sink only once the sink takes it, then present there exactly once.

The pump has two sinks: ``t`` (``testjsonl`` from ``tests/pump_plugins.py``,
told to refuse records with a ``poison`` field: with ``max_deliveries: 2``
they are isolated and dead-lettered) and ``file``, which takes everything.
Records are counted by ``seq`` at both sinks: lost, unexpected, duplicated.
The replay is run in two parts (``--limit 1``, then the rest), as an
interrupted replay run again would be: each dead letter comes back once.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.common.stream import encode_entry
from collector.testing import Daemon, Pump, RedisServer, account, console_script, wait_until

from .pump_plugins import ROOT, count_jsonl, make_record, produce, set_control

KEY = "collector:analytics"
POISON = [100, 201, 302]
EXPECTED = list(range(303))


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = RedisServer(tmp / "redis").start()
        self.daemon = Daemon.write(tmp, self.redis.url)
        self.ctl = tmp / "t.ctl"
        set_control(self.ctl, mode="ok", healthy=True, poison_field="poison")
        self.t_out, self.file_out = tmp / "t.jsonl", tmp / "file.jsonl"
        self.pump = Pump.write(tmp, self.redis.url, {
            "t": {"type": "testjsonl", "timeout_s": 1, "meta": {"path": str(self.t_out),
                                                "control": str(self.ctl)}},
            "file": {"meta": {"path": str(self.file_out)}}},
            plugins=["tests.pump_plugins"], env={"PYTHONPATH": str(ROOT)},
            max_deliveries=2, read_count=5, batch_deadline_s=1, claim_idle_ms=1500)

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*console_script("collector"), "dead-letters", *args, "--daemon",
             str(self.daemon.config), "--pump", str(self.pump.config)],
            capture_output=True, text=True, timeout=60, input=input,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})

    def listed(self, sink: str) -> list[dict]:
        proc = self.cli("list", "--sink", sink, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def close(self) -> None:
        self.pump.close()
        self.daemon.close()
        self.redis.kill()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        s.daemon.start()
        s.pump.start()
        yield s
    finally:
        s.close()


def _file_seqs(path: Path) -> dict[int, int]:
    return {int(k.rsplit(":", 1)[1]): v for k, v in count_jsonl(path, "_id").items()}


def test_poison_listed_shown_replayed_to_its_sink_only_exactly_once(stack: Stack) -> None:
    r = stack.redis.client()
    start = 0
    for p in POISON:  # good records around each poison one, as separate entries
        produce(r, p - start, per_entry=10, start=start)
        r.xadd(KEY, encode_entry("b" * 32, p, [make_record(p, poison=True)]))
        start = p + 1
    wait_until(lambda: r.xlen(f"{KEY}:dead:t") == 3, 60, "three dead letters at t")
    wait_until(lambda: sum(count_jsonl(stack.t_out).values()) == 300, 60, "t's good records")
    wait_until(lambda: sum(_file_seqs(stack.file_out).values()) == 303, 60, "the file sink")
    assert r.xlen(f"{KEY}:dead:file") == 0
    letters = stack.listed("t")
    assert [x["reason"] for x in letters] == ["max_deliveries"] * 3
    assert [x["record_id"] for x in letters] == [f"{'b' * 32}:{p}" for p in POISON]
    assert all(x["deliveries"] >= 2 and "poison record" in x["error"] for x in letters)

    text = stack.cli("list", "--sink", "t")
    assert text.returncode == 0 and "max_deliveries" in text.stdout, text.stdout
    shown = stack.cli("show", "--sink", "t", "--id", letters[0]["id"])
    assert shown.returncode == 0, shown.stderr
    assert '"seq": 100' in shown.stdout and '"poison": true' in shown.stdout
    assert "poison record" in shown.stdout

    set_control(stack.ctl, mode="ok", healthy=True)  # the cause fixed: t takes them now
    first = stack.cli("replay", "--sink", "t", "--limit", "1")
    assert first.returncode == 0, first.stderr
    assert "replayed 1" in first.stdout and "3 before, 2 after" in first.stdout
    rest = stack.cli("replay", "--sink", "t")  # the interrupted replay, run again
    assert "replayed 2" in rest.stdout and "2 before, 0 after" in rest.stdout
    again = stack.cli("replay", "--sink", "t")
    assert "replayed 0" in again.stdout
    wait_until(lambda: sum(count_jsonl(stack.t_out).values()) >= 303, 60, "the replayed")
    wait_until(lambda: all(int(g["lag"] or 0) == 0 and g["pending"] == 0
                           for g in r.xinfo_groups(KEY)), 30, "both groups caught up")
    t_acc = account(count_jsonl(stack.t_out), EXPECTED)
    file_acc = account(_file_seqs(stack.file_out), EXPECTED)
    print(f"t: {t_acc}\nfile: {file_acc}")
    assert t_acc.ok and file_acc.ok  # nothing lost, nothing twice, at either sink
    assert stack.listed("t") == [] and r.xlen(f"{KEY}:dead:file") == 0


def test_purge_asks_unless_yes(stack: Stack) -> None:
    r = stack.redis.client()
    for p in (0, 1):
        r.xadd(KEY, {"junk": f"not an entry {p}"})  # undecodable: a dead letter per sink
    dead = {s: f"{KEY}:dead:{s}" for s in ("t", "file")}
    wait_until(lambda: r.xlen(dead["t"]) == 2 and r.xlen(dead["file"]) == 2, 30,
               "the dead letters")
    no = stack.cli("purge", "--sink", "t", input="n\n")
    assert no.returncode == 1 and r.xlen(dead["t"]) == 2
    one = stack.cli("purge", "--sink", "t", "--limit", "1", input="y\n")
    assert one.returncode == 0 and "purged 1" in one.stdout and r.xlen(dead["t"]) == 1
    rest = stack.cli("purge", "--sink", "t", "--yes")
    assert rest.returncode == 0 and "1 before, 0 after" in rest.stdout
    assert stack.listed("t") == [] and len(stack.listed("file")) == 2  # file's untouched
