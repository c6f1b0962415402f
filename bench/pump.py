"""Throughput of ``collector-pump``: a pre-filled stream drained into a sink.

``python -m bench pump [--quick] [--records N]`` starts a private
``redis-server`` (no persistence), fills the stream with 1,000,000
authz-like records (~450 bytes of msgpack each, 100 per entry, the daemon's
format), then runs the real ``collector-pump`` once per (sink, workers):
each run has its own consumer group on the same stream, so every run reads
every record. The figure is records/s from the first delivery until the
group has read and acknowledged everything (polled every 20 ms). Sinks:
``null``, ``file`` (JSON Lines, ``fsync: batch``), ``postgres`` (when
PostgreSQL answers at $COLLECTOR_TEST_PG_DSN, default ``dbname=collector_test``),
``kafka``, ``influx``, ``elasticsearch`` and ``aggregate`` (into the servers of
``bench/_sink_peers.py``), each with 1 and 2 workers. It also prints the decode
cost per record (best of 5):
``msgpack.unpackb`` alone, the ormsgpack decode the worker uses, and the whole per-record pipeline
(entry decode, record decode, Record object).

Targets (issue 4): >= 200,000 records/s into null and file, >= 50,000 into
postgres, on a 2-core machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import ormsgpack
import redis

from collector.testing import RedisServer, authz_record, drop_tables, fill_stream, pg_dsn
from pump._pipeline import RecordPipeline
from pump.config import Filters

from . import _harness as h
from ._sink_peers import SINKS as PEER_SINKS
from ._sink_peers import SinkPeers

KEY = "collector:analytics"
TARGETS = {"null": 200_000, "file": 200_000, "postgres": 50_000}


def _record(seq: int) -> bytes:
    return msgpack.packb(authz_record(0, seq), use_bin_type=True)


def _pg_dsn() -> str | None:
    dsn = pg_dsn()
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=3):
            return dsn
    except Exception:
        return None


def _decode_cost(r: redis.Redis) -> tuple[float, float, float]:
    entries = r.xrange(KEY, count=200)
    raws = [rec for _, f in entries for rec in msgpack.unpackb(f[b"recs"])]
    unpack = msgpack.unpackb
    pipe = RecordPipeline(Filters(), omit=False, detail_fields=[], max_record_size=None)

    def best_of(fn: Any, n: int = 5) -> float:
        best = float("inf")
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best / len(raws) * 1e9

    per_unpack = best_of(lambda: [unpack(raw, raw=False) for raw in raws])
    fast = ormsgpack.unpackb
    per_fast = best_of(lambda: [fast(raw) for raw in raws])
    per_record = best_of(lambda: pipe.prepare(entries))
    return per_unpack, per_fast, per_record


def _run(r: redis.Redis, url: str, work: Path, name: str, sink_type: str, workers: int,
         meta: dict[str, Any], total_entries: int, total: int) -> float:
    pump = h.pump(work, url, {name: {"type": sink_type, "workers": workers, "meta": meta}},
                  name=f"{name}.yaml", log=work / f"{name}.log", trim=False, read_count=50,
                  read_block_s=0.2, log_level="warning")
    pump.start(wait=False)
    try:
        start = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            pump.check_running()
            groups = {g["name"].decode(): g for g in r.xinfo_groups(KEY)}
            g = groups.get(name)
            if g is not None:
                read = int(g.get("entries-read") or 0)
                if start is None and read > 0:
                    start = time.monotonic()
                if read >= total_entries and int(g["pending"]) == 0:
                    assert start is not None
                    return total / max(time.monotonic() - start, 1e-6)
            time.sleep(0.02)
        raise TimeoutError(f"{name} did not finish in 600 s")
    finally:
        pump.stop(60)
        pump.close()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench pump", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 records instead of 1,000,000")
    ap.add_argument("--records", type=int, default=None)
    ap.add_argument("--sinks", default="null,file,postgres," + ",".join(PEER_SINKS))
    args = ap.parse_args(argv)
    total = args.records or (100_000 if args.quick else 1_000_000)
    work = Path(tempfile.mkdtemp(prefix="bench-pump-"))
    server = RedisServer(work / "redis", appendonly=False).start()
    url = server.url
    r = server.client()
    results: list[tuple[str, int, float]] = []
    peers = SinkPeers(work)
    try:
        t0 = time.perf_counter()
        fill_stream(r, total, key=KEY, ring="b" * 32, record=_record)
        entries = int(r.xlen(KEY))
        print(f"stream: {total:,} records in {entries:,} entries "
              f"(filled in {time.perf_counter() - t0:.1f} s)")
        unpack_ns, fast_ns, record_ns = _decode_cost(r)
        print(f"decode cost per record: msgpack.unpackb {unpack_ns:.0f} ns; ormsgpack.unpackb "
              f"(used) {fast_ns:.0f} ns; whole pipeline (entry + record + "
              f"Record object) {record_ns:.0f} ns")
        dsn = _pg_dsn()
        for sink in args.sinks.split(","):
            for workers in (1, 2):
                name = f"{sink}{workers}"
                meta: dict[str, Any] = {}
                if sink == "file":
                    meta = {"path": str(work / f"{name}.jsonl"), "format": "jsonl"}
                elif sink == "postgres":
                    if dsn is None:
                        print("postgres: skipped (no PostgreSQL at COLLECTOR_TEST_PG_DSN)")
                        break
                    meta = {"dsn": dsn, "table": f"bench_pump_{workers}"}
                    drop_tables(meta["table"], dsn=dsn)
                elif sink in PEER_SINKS:
                    meta = peers.meta(sink, name)
                rate = _run(r, url, work, name, sink, workers, meta, entries, total)
                results.append((sink, workers, rate))
                if sink == "file":
                    (work / f"{name}.jsonl").unlink(missing_ok=True)
                if sink == "postgres" and dsn:
                    drop_tables(meta["table"], dsn=dsn)
    finally:
        peers.stop()
        server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'sink':<14}{'workers':>8}{'records/s':>14}{'target':>12}")
    for sink, workers, rate in results:
        target = TARGETS.get(sink, 0)
        mark = "" if not target else "ok" if rate >= target else "BELOW"
        shown = f"{target:,}" if target else "-"
        print(f"{sink:<14}{workers:>8}{rate:>14,.0f}{shown:>12} {mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
