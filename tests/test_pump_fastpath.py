"""The pipeline's fast paths (issue 18): one decode pass per entry, the steps
compiled into one function, records a forwarding sink gets undecoded.

Each path is checked against the careful one it replaces: the same records
with the same ids come out, and the real worker into a real redis sink
(the ``redis_server`` fixture) counts records by id (lost, duplicated,
unexpected).
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack

from collector.common.stream import encode_entry
from collector.testing import RedisServer, account, wait_until
from pump._metrics import WORKER_COUNTERS
from pump._pipeline import RecordPipeline, compile_filter, compile_steps
from pump._redis import ensure_groups, group_lag
from pump._worker import Stopper, Worker
from pump.config import Filters, load_config
from pump.sinks import Batch, ChangedRecord, RawRecord, Record, Records
from pump.sinks._encode import json_lines_of
from pump.sinks.file import FileConfig, FileSink

from .pump_plugins import make_record, produce

KEY = "collector:analytics"
RING = "f" * 32


def _entry(recs: list[bytes], first: int = 0, fmt: str | None = None) -> tuple[bytes, Any]:
    return (b"1-0", encode_entry(RING, first, recs, fmt))


def test_compiled_steps_keep_what_the_filter_keeps() -> None:
    filters = Filters(include={"effect": ["allow", "audit"]}, exclude={"seq": [4, 9]},
                      skip_usernames=["user3"])
    keep = compile_filter(filters)
    steps = compile_steps(filters, ["policies"], "")
    assert keep is not None and steps is not None
    values: list[Any] = ["allow", "deny", "audit", None, ["unhashable"]]
    datas = [{"seq": seq, "username": f"user{seq % 5}", "effect": effect, "policies": "p"}
             for seq, effect in enumerate(itertools.islice(itertools.cycle(values), 60))]
    for d in datas[::7]:
        del d["effect"]  # a missing field is None for the filter
    ids = [f"r:{d['seq']}" for d in datas]
    expected = [i for i, d in zip(ids, datas, strict=True) if keep(dict(d))]
    kept, out, raws, filtered, bad = steps(datas, [b"app bytes"] * len(datas), None)
    recs = Records("r:", [datas[i]["seq"] for i in kept], out, raws)
    assert recs.ids() == [ids[i] for i in kept] == expected
    assert filtered == len(datas) - len(expected)
    assert bad == [] and all(r.data["policies"] == "" for r in recs)
    assert raws == [b""] * len(kept)  # changed: no stale bytes kept
    assert all(isinstance(r, ChangedRecord) for r in recs)
    assert msgpack.unpackb(recs[0].raw)["policies"] == ""  # packed when read
    assert compile_steps(Filters(), [], "") is None


def test_an_entry_with_a_record_the_fast_decode_refuses_goes_record_by_record() -> None:
    recs = [make_record(0), msgpack.packb({b"bin key": 1, "seq": 1}), b"\xc1 not msgpack",
            make_record(3)]
    pipe = RecordPipeline(Filters(exclude={"seq": [0]}), omit=False, detail_fields=[],
                          max_record_size=None)
    out = pipe.prepare([_entry(recs, first=10)])
    assert [(r.id, r.data["seq"]) for r in out.records()] == [(f"{RING}:11", 1),
                                                              (f"{RING}:13", 3)]
    assert out.records()[0].data[b"bin key"] == 1  # msgpack's slow path takes it
    assert out.n_filtered == 1 and out.n_decode_errors == 1
    assert [d.record_id for d in out.dead] == [f"{RING}:12"]


def test_unconvertible_iam_record_is_dead_lettered_under_its_own_id() -> None:
    good = msgpack.packb({"TimeStamp": 5, "Username": "u", "Effect": "allow"})
    bad = msgpack.packb({"TimeStamp": "not a number", "Username": "u"})
    pipe = RecordPipeline(Filters(), omit=False, detail_fields=[], max_record_size=None)
    out = pipe.prepare([_entry([good, bad, good], first=7, fmt="iam")])
    assert [r.id for r in out.records()] == [f"{RING}:7", f"{RING}:9"]
    assert out.records()[0].data["username"] == "u"
    assert [d.record_id for d in out.dead] == [f"{RING}:8"]


def test_a_forwarding_sink_gets_the_apps_bytes_undecoded_unless_a_step_changes_them() -> None:
    recs = [make_record(i) for i in range(3)]
    plain = RecordPipeline(Filters(), omit=False, detail_fields=[], max_record_size=None,
                           decode=False).prepare([_entry(recs)])
    got = plain.records()
    assert all(type(r) is RawRecord for r in got)
    assert [r.raw for r in got] == recs  # the very bytes, never decoded
    assert got[1].data == msgpack.unpackb(recs[1])  # decoded only when read
    omitted = RecordPipeline(Filters(), omit=True, detail_fields=["policies"],
                             max_record_size=None, decode=False).prepare([_entry(recs)])
    assert [msgpack.unpackb(r.raw)["policies"] for r in omitted.records()] == ["", "", ""]
    decoded = RecordPipeline(Filters(), omit=False, detail_fields=[],
                             max_record_size=None).prepare([_entry(recs)])
    assert all(type(r) is Record and r.raw == raw
               for r, raw in zip(decoded.records(), recs, strict=True))


def test_worker_forwards_bytes_into_a_redis_sink_nothing_lost(redis_server: RedisServer) -> None:
    r = redis_server.client()
    cfg = load_config({"redis_url": redis_server.url, "read_block_s": 0.05, "read_count": 10,
                       "retry_initial_ms": 5, "retry_max_ms": 20, "batch_deadline_s": 0.2,
                       "claim_idle_ms": 500,
                       "pumps": {"fwd": {"type": "redis", "meta": {
                           "url": redis_server.url, "key": "forwarded"}}}}, environ={})
    w = Worker(cfg, "fwd", counters=WORKER_COUNTERS.local_slot(), stopper=Stopper())
    w.sink.open()
    ensure_groups(r, [KEY], "fwd")
    expected = produce(r, 250, per_entry=25, ring=RING)

    def drained() -> bool:
        w.step()
        return group_lag(r, KEY, "fwd") == (0, 0)

    wait_until(drained, 30, "the worker to forward every entry", interval=0)
    w.sink.close()
    rows = r.xrange("forwarded")
    got = Counter(int(f[b"id"].decode().rpartition(":")[2]) for _, f in rows)
    acc = account(got, expected)
    assert (acc.lost, acc.duplicated, acc.unexpected) == (0, 0, 0), acc
    assert all(f[b"rec"] == make_record(int(f[b"id"].decode().rpartition(":")[2]))
               for _, f in rows)


def test_a_batch_of_columns_answers_as_the_list_of_its_records() -> None:
    """The worker's batch (an entry's columns) and the same records as a list of
    Record give the same ids, fields, bytes, records and entries."""
    raws = [make_record(i) for i in range(6)]
    datas = [msgpack.unpackb(raw) for raw in raws]
    datas[2]["policies"] = ""  # changed by the pump: its bytes packed when read
    cols = Records(f"{RING}:", range(10, 16), datas, [*raws[:2], b"", *raws[3:]])
    raw_only = Records(f"{RING}:", [20, 22], None, [raws[0], raws[1]])
    batch = Batch(chunks=[cols, raw_only], stream=KEY, entry_ids=["1-0", "2-0"],
                  entry_sizes=[6, 2])
    listed = Batch(batch.records, stream=KEY, entry_ids=["1-0", "2-0"], entry_sizes=[6, 2])
    ids = [f"{RING}:{s}" for s in (10, 11, 12, 13, 14, 15, 20, 22)]
    assert batch.ids() == listed.ids() == ids and len(batch) == len(listed) == 8
    assert batch.datas() == listed.datas() == [*datas, datas[0], datas[1]]
    assert [msgpack.unpackb(b) for b in batch.raws()] == batch.datas()
    assert batch.raws()[:2] == raws[:2] and batch.raws()[6:] == raws[:2]
    assert [type(r) for r in Batch(chunks=[cols, raw_only]).records] == [
        Record, Record, ChangedRecord, Record, Record, Record, RawRecord, RawRecord]
    assert [(e, [r.id for r in rs]) for e, rs in batch.entries()] == [
        (e, [r.id for r in rs]) for e, rs in listed.entries()] == [
        ("1-0", ids[:6]), ("2-0", ids[6:])]
    half = cols[3:]
    assert isinstance(half, Records) and half.ids() == ids[3:6] and half[0].data == datas[3]
    assert cols[-1].id == ids[5] and [r.id for r in cols] == ids[:6]
    assert not Batch(chunks=[]) and not Batch() and Batch(chunks=[]).records == []


def test_json_lines_of_columns_leave_the_fields_as_they_were() -> None:
    datas = [{"seq": 1}, {"_id": "theirs", "seq": 2}, {}]
    before = [dict(d) for d in datas]
    lines, rejected = json_lines_of(["r:1", "r:2", "r:3"], datas, "_id")
    assert lines == [b'{"seq":1,"_id":"r:1"}\n', b'{"_id":"r:2","seq":2}\n',
                     b'{"_id":"r:3"}\n'] and rejected == {}
    assert datas == before and list(datas[0]) == ["seq"]
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    datas.append({"deep": deep})
    lines, rejected = json_lines_of(["r:1", "r:2", "r:3", "r:4"], datas, "_id")
    assert len(lines) == 3 and list(rejected) == ["r:4"] and "_id" not in datas[3]


def test_a_file_sink_encodes_each_entry_as_it_is_decoded_and_writes_the_same(
        tmp_path: Path) -> None:
    """Sink.encode: the file sink's lines made per entry in the pipeline are the lines
    it makes from the fields at write time; the fields let go are decoded again when
    read; halves of an entry keep their lines."""
    sink = FileSink(FileConfig(path=str(tmp_path / "pre.jsonl"), fsync="never"))
    plain = FileSink(FileConfig(path=str(tmp_path / "plain.jsonl"), fsync="never"))
    entries = [(f"{i + 1}-0".encode(), encode_entry(RING, 10 * i,
                                                      [make_record(10 * i + j) for j in range(10)]))
               for i in range(3)]
    pre = RecordPipeline(Filters(), omit=False, detail_fields=[], max_record_size=None,
                         encode=sink.encode).prepare(entries)
    decoded = RecordPipeline(Filters(), omit=False, detail_fields=[],
                             max_record_size=None).prepare(entries)
    chunks = [e.records for e in pre.entries]
    assert all(c.encoded is not None and c.datas is None for c in chunks)
    batch = Batch(chunks=chunks)
    assert batch.datas() == Batch(chunks=[e.records for e in decoded.entries]).datas()
    assert batch.encoded() == json_lines_of(batch.ids(), batch.datas(), "_id")[0]
    assert chunks[1][5:].encoded == chunks[1].encoded[5:]  # type: ignore[index]
    for s, b in ((sink, Batch(chunks=chunks)),
                 (plain, Batch(chunks=[e.records for e in decoded.entries]))):
        s.open()
        s.write(b, deadline=time.monotonic() + 10)
        s.close()
    assert (tmp_path / "pre.jsonl").read_bytes() == (tmp_path / "plain.jsonl").read_bytes()
    lines = (tmp_path / "pre.jsonl").read_bytes().splitlines()
    assert [json.loads(x)["_id"] for x in lines] == [f"{RING}:{i}" for i in range(30)]
