"""The pump worker in-process against a real redis-server, with the memory sink.

Each test counts records by their ``seq`` and reports lost and duplicated ones.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import msgpack
import pytest

from collector.common.settings import ConfigWarning
from collector.common.stream import decode_entry, encode_entry
from collector.testing import RedisServer, account, wait_until
from pump._metrics import WORKER_COUNTERS
from pump._redis import group_lag, trim_acknowledged
from pump._source import ListMover
from pump._worker import Stopper, Worker
from pump.config import load_config
from pump.sinks.memory import MemorySink

from .pump_plugins import make_record, produce

KEY = "collector:analytics"


def config(redis_server: RedisServer, pumps: dict[str, Any], **extra: Any) -> Any:
    base: dict[str, Any] = {
        "redis_url": redis_server.url, "read_block_s": 0.05, "read_count": 10,
        "retry_initial_ms": 5, "retry_max_ms": 20, "batch_deadline_s": 0.2,
        "claim_idle_ms": 500, "pumps": pumps,
    }
    base.update(extra)
    return load_config(base, environ={})


def memory(key: str, **meta: Any) -> dict[str, Any]:
    return {"type": "memory", "timeout_s": 0.1, "meta": {"key": key, **meta}}


def make_worker(cfg: Any, name: str, index: int = 0, **kw: Any) -> Worker:
    return Worker(cfg, name, index, counters=WORKER_COUNTERS.local_slot(), stopper=Stopper(), **kw)


def seqs(sink: MemorySink) -> Counter[int]:
    return Counter(r.data["seq"] for r in sink.records)


def run_until(workers: list[Worker], cond: Any, timeout: float = 30.0) -> None:
    def turn() -> bool:
        for w in workers:
            w.step()
        return bool(cond())
    wait_until(turn, timeout, "workers to deliver", interval=0)


def dead_entries(r: Any, sink: str) -> list[dict[bytes, bytes]]:
    return [f for _, f in r.xrange(f"{KEY}:dead:{sink}")]


def test_two_sinks_get_every_record_exactly_once(redis_server: RedisServer) -> None:
    r = redis_server.client()
    expected = produce(r, 3000, per_entry=50)
    cfg = config(redis_server, {"m1": memory("t1"), "m2": memory("t2")})
    w1, w2 = make_worker(cfg, "m1"), make_worker(cfg, "m2")
    s1, s2 = MemorySink.instances["t1"], MemorySink.instances["t2"]
    w1.sink.open()
    w2.sink.open()
    from pump._redis import ensure_groups
    ensure_groups(r, [KEY], "m1")
    ensure_groups(r, [KEY], "m2")
    run_until([w1, w2], lambda: len(s1.records) >= 3000 and len(s2.records) >= 3000)
    for sink in (s1, s2):
        acc = account(seqs(sink), expected)
        assert (acc.lost, acc.duplicated) == (0, 0), str(acc)
        assert {r.id for r in sink.records} == {f"{'a' * 32}:{s}" for s in expected}
    assert group_lag(r, KEY, "m1") == (0, 0)
    assert w1.counters.get("records_out") == 3000


def _ready(r: Any, *workers: Worker) -> None:
    from pump._redis import ensure_groups
    for w in workers:
        w.sink.open()
        ensure_groups(r, [KEY], w.group)


def test_poison_entry_dead_lettered_after_max_deliveries_while_later_records_flow(
        redis_server: RedisServer) -> None:
    r = redis_server.client()
    cfg = config(redis_server, {"m": memory("poison", poison_field="poison",
                                            poison_mode="retryable")}, max_deliveries=3)
    w = make_worker(cfg, "m")
    sink = MemorySink.instances["poison"]
    _ready(r, w)
    produce(r, 100, per_entry=10)
    r.xadd(KEY, encode_entry("b" * 32, 0, [make_record(100, poison=True)]))
    produce(r, 100, per_entry=10, start=101)
    run_until([w], lambda: len(dead_entries(r, "m")) == 1 and len(sink.records) == 200)
    dead = dead_entries(r, "m")[0]
    assert dead[b"dl_reason"] == b"max_deliveries"
    assert int(dead[b"dl_deliveries"]) == 3
    assert b"poison record" in dead[b"dl_error"]
    entry = decode_entry(dead)  # the original fields are kept: the entry can be replayed
    assert msgpack.unpackb(entry.records[0])["seq"] == 100
    acc = account(seqs(sink), [*range(100), *range(101, 201)])
    assert (acc.lost, acc.duplicated) == (0, 0), str(acc)
    run_until([w], lambda: group_lag(r, KEY, "m") == (0, 0))
    assert w.counters.get("records_dead_lettered") == 1


def test_permanent_error_splits_the_batch_and_dead_letters_only_the_bad_entry(
        redis_server: RedisServer) -> None:
    r = redis_server.client()
    cfg = config(redis_server, {"m": memory("perm", poison_field="poison")})
    w = make_worker(cfg, "m")
    sink = MemorySink.instances["perm"]
    _ready(r, w)
    produce(r, 30, per_entry=10)
    r.xadd(KEY, encode_entry("c" * 32, 0, [make_record(30, poison=True)]))
    produce(r, 30, per_entry=10, start=31)
    run_until([w], lambda: len(dead_entries(r, "m")) == 1 and len(sink.records) == 60)
    assert dead_entries(r, "m")[0][b"dl_reason"] == b"permanent"
    assert int(dead_entries(r, "m")[0][b"dl_deliveries"]) == 1
    acc = account(seqs(sink), [*range(30), *range(31, 61)])
    assert (acc.lost, acc.duplicated) == (0, 0)


def test_undecodable_entry_and_record_are_dead_lettered_not_passed_on(
        redis_server: RedisServer) -> None:
    r = redis_server.client()
    cfg = config(redis_server, {"m": memory("bad")})
    w = make_worker(cfg, "m")
    sink = MemorySink.instances["bad"]
    _ready(r, w)
    produce(r, 10, per_entry=10)
    r.xadd(KEY, {"v": b"1", "ring": b"x", "seq": b"zz", "n": b"1", "recs": b"\xc1"})
    r.xadd(KEY, {"something": b"else"})
    good = [make_record(10), b"\xc1\xc1 not msgpack", msgpack.packb([1, 2]), make_record(13)]
    r.xadd(KEY, encode_entry("d" * 32, 10, good))
    run_until([w], lambda: len(dead_entries(r, "m")) == 4 and len(sink.records) == 12)
    reasons = Counter(d[b"dl_reason"] for d in dead_entries(r, "m"))
    assert reasons == {b"undecodable_entry": 2, b"undecodable_record": 2}
    assert all(r.data for r in sink.records), "an empty record was handed on"
    assert sorted(seqs(sink)) == [*range(10), 10, 13]
    bad_record = next(d for d in dead_entries(r, "m") if d[b"dl_reason"] == b"undecodable_record"
                      and decode_entry(d).first_seq == 11)
    assert decode_entry(bad_record).records == [b"\xc1\xc1 not msgpack"]
    assert w.counters.get("decode_errors") == 4
    run_until([w], lambda: group_lag(r, KEY, "m") == (0, 0))


def test_dead_letter_stream_is_bounded_and_carries_what_replay_needs(
        redis_server: RedisServer) -> None:
    """20 undecodable records with dead_letter_max_entries 5: the newest 5 stay, 15
    dropped and counted; each dead letter is its record's entry with the same id."""
    r = redis_server.client()
    cfg = config(redis_server, {"m": memory("dlbound")}, dead_letter_max_entries=5)
    w = make_worker(cfg, "m")
    sink = MemorySink.instances["dlbound"]
    _ready(r, w)
    ring = "f" * 32
    for i in range(20):  # each entry: a good record and one that is not msgpack
        r.xadd(KEY, encode_entry(ring, 2 * i, [make_record(i), b"\xc1 bad %d" % i]))
    run_until([w], lambda: len(sink.records) == 20 and group_lag(r, KEY, "m") == (0, 0))
    dead = dead_entries(r, "m")
    assert len(dead) == 5
    assert w.counters.get("records_dead_lettered") == 20
    assert w.counters.get("dead_letters_dropped") == 15
    kept = [decode_entry(d) for d in dead]
    assert [e.records[0] for e in kept] == [b"\xc1 bad %d" % i for i in range(15, 20)]
    for d, e in zip(dead, kept, strict=True):  # everything a replay needs
        assert e.ids() == [d[b"dl_record_id"].decode()] == [f"{ring}:{e.first_seq}"]
        assert d[b"dl_sink"] == b"m" and d[b"dl_stream"] == KEY.encode()
        assert d[b"dl_reason"] == b"undecodable_record" and d[b"dl_v"] == b"1"
        assert int(d[b"dl_deliveries"]) == 1 and d[b"dl_entry_id"]
        assert 0 < int(d[b"dl_first_failure_ms"]) <= int(d[b"dl_last_failure_ms"])
    assert sorted(seqs(sink)) == list(range(20))


def test_oversized_record_trimmed_and_counted(redis_server: RedisServer) -> None:
    r = redis_server.client()
    cfg = config(redis_server, {"m": {**memory("big"), "max_record_bytes": 300}})
    w = make_worker(cfg, "m")
    sink = MemorySink.instances["big"]
    _ready(r, w)
    r.xadd(KEY, encode_entry("e" * 32, 0, [make_record(0, request="x" * 5000),
                                           make_record(1)]))
    run_until([w], lambda: len(sink.records) == 2)
    big = next(rec for rec in sink.records if rec.data["seq"] == 0)
    assert len(big.raw) <= 300 and msgpack.unpackb(big.raw) == big.data
    assert big.data["request"].startswith("xxx") and big.data["username"] == "user0"
    assert w.counters.get("records_trimmed") == 1


def test_filters_and_omit_detailed_recording(redis_server: RedisServer) -> None:
    r = redis_server.client()
    pumps = {
        "inc": {**memory("inc"), "filters": {"include": {"username": ["user1", "user2"]},
                                             "exclude": {"seq": [1]}}},
        "users": {**memory("users"), "filters": {"usernames": ["user3"]},
                  "omit_detailed_recording": False},
        "skip": {**memory("skip"), "filters": {"skip_usernames": ["user0"]}},
    }
    cfg = config(redis_server, pumps, omit_detailed_recording=True)
    ws = [make_worker(cfg, n) for n in pumps]
    _ready(r, *ws)
    expected = produce(r, 70, per_entry=10)
    inc, users, skip = (MemorySink.instances[k] for k in ("inc", "users", "skip"))
    run_until(ws, lambda: all(group_lag(r, KEY, n) == (0, 0) for n in pumps))
    assert sorted(seqs(inc)) == [s for s in expected if s % 7 in (1, 2) and s != 1]
    assert sorted(seqs(users)) == [s for s in expected if s % 7 == 3]
    assert sorted(seqs(skip)) == [s for s in expected if s % 7 != 0]
    assert ws[0].counters.get("records_filtered") == 70 - len(inc.records)
    assert all(rec.data["policies"] == "" and rec.data["deciders"] == "" for rec in skip.records)
    assert all(msgpack.unpackb(rec.raw)["policies"] == "" for rec in skip.records)
    # iam-pump's rule: a sink's own false does not undo the top-level omission
    assert all(rec.data["policies"] == "" for rec in users.records)


def test_a_sinks_omit_flag_only_adds_blanking(redis_server: RedisServer) -> None:
    r = redis_server.client()
    pumps = {"plain": memory("plain"),
             "blank": {**memory("blank"), "omit_detailed_recording": True}}
    cfg = config(redis_server, pumps, omit_detailed_recording=False)
    ws = [make_worker(cfg, n) for n in pumps]
    _ready(r, *ws)
    produce(r, 20, per_entry=10)
    plain, blank = MemorySink.instances["plain"], MemorySink.instances["blank"]
    run_until(ws, lambda: all(group_lag(r, KEY, n) == (0, 0) for n in pumps))
    assert len(plain.records) == len(blank.records) == 20
    assert all(rec.data["policies"] == "p1,p2" for rec in plain.records)
    assert all(rec.data["policies"] == "" for rec in blank.records)


def test_sink_outage_holds_its_group_only_and_drains_after_recovery(
        redis_server: RedisServer) -> None:
    r = redis_server.client()
    cfg = config(redis_server, {"down": memory("down"), "up": memory("up")}, max_deliveries=2)
    down_w, up_w = make_worker(cfg, "down"), make_worker(cfg, "up")
    _ready(r, down_w, up_w)
    down, up = MemorySink.instances["down"], MemorySink.instances["up"]
    down.healthy = False
    down.fail_next_n = 10**9
    thread = threading.Thread(target=down_w.run, daemon=True)
    thread.start()
    try:
        expected = produce(r, 500, per_entry=10)
        run_until([up_w], lambda: len(up.records) == 500)
        wait_until(lambda: down.writes >= 3, 30, "the failing sink to be tried")
        expected += produce(r, 500, per_entry=10, start=500)
        run_until([up_w], lambda: len(up.records) == 1000)
        assert group_lag(r, KEY, "up") == (0, 0), "the healthy sink's lag grew"
        assert dead_entries(r, "down") == [], "an outage must not dead-letter"
        down.fail_next_n = 0
        down.healthy = True
        wait_until(lambda: len(down.records) >= 1000, 30, "the backlog to drain")
        wait_until(lambda: group_lag(r, KEY, "down") == (0, 0), 30, "acks")
    finally:
        down_w.stopper.request()
        thread.join(10)
    for sink in (down, up):
        acc = account(seqs(sink), expected)
        assert (acc.lost, acc.duplicated) == (0, 0), f"{sink.config}: {acc}"


def test_entries_of_a_dead_consumer_are_claimed(redis_server: RedisServer) -> None:
    r = redis_server.client()
    cfg = config(redis_server, {"m": memory("claim")})
    w = make_worker(cfg, "m", index=1)
    _ready(r, w)
    expected = produce(r, 100, per_entry=10)
    # a consumer that read everything and died without acknowledging
    got = r.xreadgroup("m", "gone:m:0", {KEY: ">"}, count=100)
    assert len(got[0][1]) == 10
    sink = MemorySink.instances["claim"]
    run_until([w], lambda: len(sink.records) == 100, timeout=30)
    acc = account(seqs(sink), expected)
    assert (acc.lost, acc.duplicated) == (0, 0)
    info = r.xpending(KEY, "m")
    assert info["pending"] == 0


def test_trim_never_removes_unacknowledged_entries(redis_server: RedisServer) -> None:
    r = redis_server.client()
    from pump._redis import ensure_groups
    ensure_groups(r, [KEY], "fast")
    ensure_groups(r, [KEY], "slow")
    produce(r, 100, per_entry=10)
    ids = [eid for eid, _ in r.xrange(KEY)]
    for eid, _ in r.xreadgroup("fast", "c", {KEY: ">"})[0][1]:
        r.xack(KEY, "fast", eid)
    # slow: read 6 entries, ack only the first 2 and the 5th
    slow = [eid for eid, _ in r.xreadgroup("slow", "c", {KEY: ">"}, count=6)[0][1]]
    r.xack(KEY, "slow", slow[0], slow[1], slow[4])
    groups = ("fast", "slow")
    assert trim_acknowledged(r, KEY, groups) == 2
    remaining = [eid for eid, _ in r.xrange(KEY)]
    assert remaining == ids[2:]
    r.xack(KEY, "slow", slow[2], slow[3], slow[5])
    # up to (not including) the last entry delivered to "slow", which MINID keeps
    assert trim_acknowledged(r, KEY, groups) == 3
    assert [eid for eid, _ in r.xrange(KEY)] == ids[5:]
    # a group nobody configured, made at the end ($), holds nothing back
    r.xgroup_create(KEY, "oldsink", id="$")
    for eid, _ in r.xreadgroup("slow", "c", {KEY: ">"})[0][1]:
        r.xack(KEY, "slow", eid)
    assert trim_acknowledged(r, KEY, groups) == 4
    assert trim_acknowledged(r, KEY, (*groups, "missing")) == 0, "a named group not there yet"
    produce(r, 10, per_entry=10, key="other")
    assert trim_acknowledged(r, "other", groups) == 0  # no group: nothing may go


def test_list_source_moves_atomically_with_stable_ids(redis_server: RedisServer) -> None:
    r = redis_server.client()
    cfg = config(redis_server, {"m": memory("list")},
                 source={"type": "list", "list_batch_size": 40})
    w = make_worker(cfg, "m")
    _ready(r, w)
    r.rpush("analytics-iam-system-analytics", *[make_record(s) for s in range(100)])
    mover = ListMover(cfg, r)
    assert [mover.move_once() for _ in range(4)] == [40, 40, 20, 0]
    assert r.llen("analytics-iam-system-analytics") == 0
    sink = MemorySink.instances["list"]
    run_until([w], lambda: len(sink.records) == 100)
    acc = account(seqs(sink), list(range(100)))
    assert (acc.lost, acc.duplicated) == (0, 0)
    assert sorted(int(rec.id.rsplit(":", 1)[1]) for rec in sink.records) == list(range(100))
    assert sink.records[0].id.startswith("list-analytics-iam-system-analytics:")


@pytest.mark.parametrize("mode", ["retryable", "permanent"])
def test_fail_next_n_is_retried_or_isolated(redis_server: RedisServer, mode: str) -> None:
    r = redis_server.client()
    cfg = config(redis_server, {"m": memory(f"n-{mode}", fail_next_n=2, fail_mode=mode)})
    w = make_worker(cfg, "m")
    _ready(r, w)
    produce(r, 10, per_entry=10)
    sink = MemorySink.instances[f"n-{mode}"]
    run_until([w], lambda: group_lag(r, KEY, "m") == (0, 0))
    # a permanent error that no part of the batch hits again when written alone is
    # nobody's fault: every record is delivered, none dead-lettered
    assert sorted(seqs(sink)) == list(range(10)) and dead_entries(r, "m") == []


def test_every_shard_is_read(redis_server: RedisServer) -> None:
    r = redis_server.client()
    cfg = config(redis_server, {"m": memory("shards")}, stream_shards=3)
    keys = cfg.shard_keys()
    assert keys == [f"{KEY}:{{{i}}}" for i in range(3)]
    w = make_worker(cfg, "m")
    w.sink.open()
    from pump._redis import ensure_groups
    ensure_groups(r, keys, "m")
    expected: list[int] = []
    for i, key in enumerate(keys):
        expected += produce(r, 100, per_entry=10, start=i * 100, key=key, ring=str(i) * 32)
    sink = MemorySink.instances["shards"]
    run_until([w], lambda: len(sink.records) == 300)
    acc = account(seqs(sink), expected)
    assert (acc.lost, acc.duplicated) == (0, 0)
    run_until([w], lambda: all(group_lag(r, k, "m") == (0, 0) for k in keys))


def test_delivery_limit_isolates_with_one_attempt_per_part(redis_server: RedisServer) -> None:
    """Past max_deliveries each part gets one attempt, not retries until timeout_s
    (set above the batch deadline on purpose, which the config warns about)."""
    r = redis_server.client()
    with pytest.warns(ConfigWarning, match="timeout_s"):
        cfg = config(redis_server, {"m": {**memory("limit", poison_field="poison",
                                                   poison_mode="retryable"), "timeout_s": 30}},
                     max_deliveries=2)
    w = make_worker(cfg, "m")
    sink = MemorySink.instances["limit"]
    _ready(r, w)
    recs = [make_record(s, poison=(s == 2)) for s in range(4)]
    r.xadd(KEY, encode_entry("d" * 32, 0, recs))
    r.xreadgroup("m", w.consumer, {KEY: ">"})
    for _ in range(2):  # delivered 3 times and never acknowledged (crashes, say)
        r.xreadgroup("m", w.consumer, {KEY: "0"})
    run_until([w], lambda: group_lag(r, KEY, "m") == (0, 0))
    # parts [0 1 2 3] fails, [0 1] written, [2 3] fails, [2] fails alone, [3] written
    assert sink.writes == 5
    assert sorted(seqs(sink)) == [0, 1, 3]
    dead = dead_entries(r, "m")
    assert [d[b"dl_reason"] for d in dead] == [b"max_deliveries"]
    assert dead[0][b"dl_record_id"] == f"{'d' * 32}:2".encode()
