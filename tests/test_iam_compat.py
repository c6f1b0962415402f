"""Records from the real iam-authz-server encoder reach every sink as iam-pump stores them.

The peer is Go, not Python: ``tests/iam_peer/main.go`` is built once per
session from Debian's packages (``golang-go``,
``golang-github-vmihailenco-msgpack.v5-dev``, ``golang-gopkg-mgo.v2-dev``) in
GOPATH mode. It encodes varied ``AnalyticsRecord`` values (unicode, long
request JSON, empty and zero values, a zero ``ExpireAt``, times before 1970)
with ``msgpack.Marshal`` as iam-authz-server does, RPUSHes them onto a real
redis-server list, and writes what iam-pump makes of each one: the struct
decoded back with msgpack v5 and marshalled by ``encoding/json``, by mgo's
``bson`` (iam-pump's MongoDB driver) and as its csv pump's row. The pump
drains the list into jsonl, csv (``csv_style: iam``), PostgreSQL and MongoDB
(the real pymongo driver against ``mockupdb``, a MongoDB wire-protocol peer:
``mongod`` is not packaged for Debian), and every record is compared field
by field, for MongoDB byte by byte. ``-s`` prints the counts.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bson
import psycopg

from collector.testing import (
    MongoPeer,
    Pump,
    RedisServer,
    account,
    drop_tables,
    jsonl_records,
    pg_dsn,
    unique_table,
    wait_until,
)
from tests._iam import (
    N,
    dead_letters,
    drained,
    index,
    produce,
    run_peer,
)


def test_iam_records_reach_every_sink_as_iam_pump_stores_them(
        iam_peer: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    r = redis_server.client()
    mongo = MongoPeer().start()
    table = unique_table("iam_compat")
    pumps = {
        "jsonl": {"type": "file", "meta": {"path": str(tmp_path / "out.jsonl")}},
        "csv": {"type": "file", "meta": {"path": str(tmp_path / "csv"), "format": "csv",
                                         "csv_style": "iam"}},
        "postgres": {"type": "postgres", "meta": {"dsn": pg_dsn(), "table": table}},
        "mongo": {"type": "mongo", "meta": {"uri": mongo.uri, "database": "iam",
                                            "collection": "analytics"}},
    }
    pump = Pump.write(tmp_path, redis_server.url, pumps, source={"type": "list"})
    try:
        pump.start()
        t0 = time.time()
        ref = produce(iam_peer, redis_server, tmp_path / "reference.jsonl")
        wait_until(lambda: drained(r, list(pumps)), 120, "every sink to take every record")
        t1 = time.time()
        pump.stop()

        # jsonl: iam-pump's decoded fields, in its order, expireAt as its ISO 8601 text
        seen = {}
        for line in jsonl_records(tmp_path / "out.jsonl"):
            i = index(line.pop("_id"))
            assert list(line) == list(ref.json[i]) and line == ref.json[i], i
            seen[i] = seen.get(i, 0) + 1
        jsonl = account(seen, range(N))

        # csv: iam-pump's file names, header and row text
        names = {run_peer(iam_peer, "-csv-name", str(int(t))).strip() for t in (t0, t1)}
        files = sorted((tmp_path / "csv").iterdir(), key=lambda p: p.stat().st_mtime)
        assert {f.name for f in files} <= names, (files, names)
        rows = ""
        for f in files:
            text = f.read_text()
            assert text.startswith(ref.csv_header)
            rows += text[len(ref.csv_header):]
        assert rows == "".join(ref.csv)

        # postgres: the fields in jsonb, expireAt a timestamptz when cast, ts from timestamp
        with psycopg.connect(pg_dsn()) as conn:
            stored = conn.execute(
                f"SELECT id, record, ts, (record->>'expireAt')::timestamptz FROM {table}"
            ).fetchall()
        pg_seen = {}
        for rid, record, ts, expire in stored:
            i = index(rid)
            want = ref.json[i]
            assert record == want, i
            assert ts == datetime.fromtimestamp(want["timestamp"], UTC)
            assert expire == _micro(want["expireAt"])
            pg_seen[i] = 1
        pg = account(pg_seen, range(N))

        # mongo: the very BSON document mgo writes (field order, int64, dates), plus _id
        docs = mongo.stored("iam", "analytics")
        mongo_seen = {}
        for rid, doc in docs.items():
            i = index(rid)
            body = {k: v for k, v in doc.items() if k != "_id"}
            assert isinstance(body["expireAt"], datetime)
            assert bson.encode(body) == ref.bson[i], i
            mongo_seen[i] = 1
        mg = account(mongo_seen, range(N))

        dead = {s: dead_letters(r, s) for s in pumps}
        print(f"\niam records from the Go encoder: {N}; jsonl {jsonl.distinct} equal "
              f"(lost {jsonl.lost}), csv {len(ref.csv)} rows equal, postgres {pg.distinct} "
              f"equal (lost {pg.lost}), mongo {mg.distinct} equal (lost {mg.lost}); "
              f"dead letters {dead}")
        assert jsonl.ok and pg.ok and mg.ok
        assert (jsonl.distinct, pg.distinct, mg.distinct) == (N, N, N)
        assert dead == dict.fromkeys(pumps, 0)
    finally:
        pump.close()
        mongo.stop()
        drop_tables(table)


def _micro(iso: str) -> datetime:
    """Go's RFC 3339 text as PostgreSQL reads it: the fraction rounded to the
    microsecond with ``rint`` (half to even on the double), not cut."""
    head, dot, frac = iso.removesuffix("Z").partition(".")
    at = datetime.fromisoformat(head + "+00:00")
    return at + timedelta(microseconds=round(float("0." + frac) * 1_000_000) if dot else 0)


def test_filters_and_omit_count_as_iam_pump_counts(
        iam_peer: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    r = redis_server.client()
    pumps = {
        "users": {"type": "file", "filters": {"usernames": ["alice", "张三"]},
                  "meta": {"path": str(tmp_path / "users.jsonl")}},
        "skip": {"type": "file", "filters": {"skip_usernames": ["bob", "carol"]},
                 "meta": {"path": str(tmp_path / "skip.jsonl")}},
        "all": {"type": "file", "omit_detailed_recording": False,
                "meta": {"path": str(tmp_path / "all.jsonl")}},
    }
    pump = Pump.write(tmp_path, redis_server.url, pumps, source={"type": "list"},
                      omit_detailed_recording=True)
    try:
        pump.start()
        ref = produce(iam_peer, redis_server, tmp_path / "reference.jsonl")
        wait_until(lambda: drained(r, list(pumps)), 120, "every sink to take every record")
        pump.stop()
    finally:
        pump.close()
    got = {name: list(jsonl_records(tmp_path / f"{name}.jsonl")) for name in pumps}
    print(f"\nfilters: usernames kept {len(got['users'])} (iam-pump "
          f"{ref.counts['usernames_kept']}), skip_usernames kept {len(got['skip'])} (iam-pump "
          f"{ref.counts['skip_usernames_kept']}); omitted detail in "
          f"{sum(1 for recs in got.values() for x in recs if not x['policies'])} of "
          f"{sum(len(recs) for recs in got.values())}")
    assert len(got["users"]) == ref.counts["usernames_kept"] > 0
    assert len(got["skip"]) == ref.counts["skip_usernames_kept"] > 0
    assert len(got["all"]) == N
    assert {x["username"] for x in got["users"]} <= {"alice", "张三"}
    # the top-level omit_detailed_recording applies before every sink; a sink's false
    # does not undo it (iam-pump's rule)
    assert all(x["policies"] == "" and x["deciders"] == "" for recs in got.values() for x in recs)
    assert sum(1 for x in ref.json if x["policies"]) > 0
    assert all(dead_letters(r, s) == 0 for s in pumps)
