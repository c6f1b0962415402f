"""Throughput of ``collector-pump``: a pre-filled stream drained into a sink.

``python -m bench pump [--quick] [--records N]`` starts a private
``redis-server`` (no persistence), fills the stream with 1,000,000
authz-like records (~450 bytes of msgpack each, 100 per entry, the daemon's
format), then runs the real ``collector-pump`` once per (sink, workers):
each run has its own consumer group on the same stream, so every run reads
every record. The figure is records/s from the first delivery until the
group has read and acknowledged everything (polled every 20 ms). Sinks:
``null``, ``file`` (JSON Lines, ``fsync: batch`` as shipped, and again as
``file:never`` with ``fsync: never``: what the CPU allows without the disk;
``--file-fsync batch|never`` runs one of them), ``postgres`` (when
PostgreSQL answers at $COLLECTOR_TEST_PG_DSN, default ``dbname=collector_test``),
``kafka``, ``influx``, ``elasticsearch``, ``mongo`` (a mockupdb peer: a sanity
check only) and ``aggregate`` (into the servers of ``bench/_sink_peers.py``),
each with 1 and 2 workers. It also prints the decode
cost per record (best of 5):
``msgpack.unpackb`` alone, the ormsgpack decode the worker uses, and the whole per-record pipeline
(entry decode, record decode, the entry's columns).

Each run prints records/s, the workers' CPU per record, and beside them the
floors (``bench/_pump_floor.py``, same run): decoding alone, and decoding
plus the sink's own encoder (``ENCODERS`` there; JSON for a sink not listed),
as records/s of one core, with the run's fraction of each. Targets (issue
18, one worker, verdicts printed): ``null`` at least 70% of the decode
floor, ``file`` at least 60% of the decode + orjson floor, ``postgres`` at
least 120,000 records/s; beside each verdict the same fraction of the floor's
CPU per record ("by CPU": the worker's CPU time, which other load on the
machine moves less than its wall-clock records/s). The load average at the
start and end of the runs is printed with them. For postgres it also prints the server's own
floor (``bench/_pg_floor.py``: the sink's rows pre-encoded, ``COPY``-ed in
the sink's batches into the sink's table) as records/s and backend CPU per
record, each run's backend CPU per record beside the worker's, and the
ceiling one worker has on this machine's idle cores with that floor (one
core for the backend; the worker's and the backend's CPU on all cores), with
the verdict: whether 120,000 is within that ceiling, and whether the run
reached it.
"""

from __future__ import annotations

import argparse
import os
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
from ._pg_floor import PgFloor, backend_pids, pid_cpu, server_floor
from ._pump_floor import descendants_cpu, floors
from ._sink_peers import SINKS as PEER_SINKS
from ._sink_peers import SinkPeers

KEY = "collector:analytics"
READ_COUNT = 50  # entries per read, as configured for the runs
PER_ENTRY = 100  # records per stream entry (fill_stream's)
#: sink -> (what its one-worker figure is compared with, the least it must reach):
#: "decode" / "encode" a fraction of that floor, "rate" records/s.
TARGETS: dict[str, tuple[str, float]] = {
    "null": ("decode", 0.70), "file": ("encode", 0.60), "postgres": ("rate", 120_000)}


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
         meta: dict[str, Any], total_entries: int, total: int
         ) -> tuple[float, float, float | None]:
    """(records/s, the workers' CPU microseconds per record, the PostgreSQL
    backends' for a sink that names its connections) of one run."""
    pump = h.pump(work, url, {name: {"type": sink_type, "workers": workers, "meta": meta}},
                  name=f"{name}.yaml", log=work / f"{name}.log", trim=False,
                  read_count=READ_COUNT,
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
                    cpu0 = descendants_cpu(pump.pid or 0)
                    app = meta.get("application_name")
                    server0 = {p: pid_cpu(p) for p in backend_pids(meta["dsn"], app)} if app else {}
                if read >= total_entries and int(g["pending"]) == 0:
                    assert start is not None
                    rate = total / max(time.monotonic() - start, 1e-6)
                    server = None
                    if app:  # a backend connected since the start had used ~0 CPU then
                        pids = set(server0) | set(backend_pids(meta["dsn"], app))
                        used = sum(pid_cpu(p) - server0.get(p, 0.0) for p in pids)
                        server = used / total * 1e6
                    return rate, (descendants_cpu(pump.pid or 0) - cpu0) / total * 1e6, server
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
    ap.add_argument("--file-fsync", default="both", choices=("batch", "never", "both"),
                    help="the file sink's fsync policy: batch (shipped), never (what the CPU "
                         "allows), both (default: one run each, side by side)")
    args = ap.parse_args(argv)
    total = args.records or (100_000 if args.quick else 1_000_000)
    work = Path(tempfile.mkdtemp(prefix="bench-pump-"))
    server = RedisServer(work / "redis", appendonly=False).start()
    url = server.url
    r = server.client()
    results: list[tuple[str, int, float, float, float | None]] = []
    pg_floor: PgFloor | None = None
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
              f"columns) {record_ns:.0f} ns")
        dsn = _pg_dsn()
        raws = [rec for _, f in r.xrange(KEY, count=200) for rec in msgpack.unpackb(f[b"recs"])]
        floor = floors(raws, args.sinks.split(","))
        print(f"load average at the start: {_load()}")
        for sink in _runs(args.sinks.split(","), args.file_fsync):
            base, _, fsync = sink.partition(":")  # file:never is file with fsync never
            for workers in (1, 2):
                name = f"{base}{fsync}{workers}"
                meta: dict[str, Any] = {}
                if base == "file":
                    meta = {"path": str(work / f"{name}.jsonl"), "format": "jsonl",
                            "fsync": fsync or "batch"}
                elif sink == "postgres":
                    if dsn is None:
                        print("postgres: skipped (no PostgreSQL at COLLECTOR_TEST_PG_DSN)")
                        break
                    meta = {"dsn": dsn, "table": f"bench_pump_{workers}",
                            "application_name": f"bench-pump-{name}"}
                    drop_tables(meta["table"], dsn=dsn)
                    if pg_floor is None:
                        pg_floor = server_floor(dsn, "bench_pump_floor", raws,
                                                READ_COUNT * PER_ENTRY, min(total, 100_000))
                elif sink in PEER_SINKS:
                    meta = peers.meta(sink, name)
                rate, cpu_us, server_us = _run(r, url, work, name, base, workers, meta,
                                               entries, total)
                results.append((sink, workers, rate, cpu_us, server_us))
                if base == "file":
                    (work / f"{name}.jsonl").unlink(missing_ok=True)
                if sink == "postgres" and dsn:
                    drop_tables(meta["table"], dsn=dsn)
        print(f"load average at the end: {_load()} (on {os.cpu_count()} cores: records/s is "
              "wall-clock and shares the cores; the floors and cpu% are CPU time)")
    finally:
        peers.stop()
        server.kill()
        shutil.rmtree(work, ignore_errors=True)
    _report(results, floor)
    if pg_floor is not None:
        _report_pg(results, pg_floor)
    return 0


def _report(results: list[tuple[str, int, float, float, float | None]],
            floor: dict[str, tuple[float, float]]) -> None:
    """The table: each run beside its floors, and the one-worker targets' verdicts."""
    print("\nfloors are records/s of one core (decode; decode + the sink's encoder); "
          "% = the run's records/s of that floor; cpu% = the decode floor's CPU per record "
          "of the workers' CPU per record")
    print(f"{'sink':<14}{'workers':>8}{'records/s':>12}{'CPU us/rec':>11}{'cpu%':>5}"
          f"{'decode':>11}{'%':>5}{'dec+enc':>11}{'%':>5}  target")
    for sink, workers, rate, cpu_us, _ in results:
        base, _, fsync = sink.partition(":")
        dec, enc = floor[base]
        line = (f"{sink:<14}{workers:>8}{rate:>12,.0f}{cpu_us:>11.2f}"
                f"{1e6 / dec / max(cpu_us, 1e-9):>5.0%}{dec:>11,.0f}"
                f"{rate / dec:>5.0%}{enc:>11,.0f}{rate / enc:>5.0%}")
        kind, least = TARGETS.get(base, ("", 0.0))
        if kind and workers == 1:
            got = rate if kind == "rate" else rate / (dec if kind == "decode" else enc)
            floor_name = "decode" if kind == "decode" else "dec+enc"
            want = (f">= {least:,.0f} rec/s" if kind == "rate"
                    else f">= {least:.0%} of the {floor_name} floor")
            verdict = "ok" if got >= least else "BELOW"
            if kind != "rate":  # the same fraction of the floor's CPU per record
                by_cpu = 1e6 / (dec if kind == "decode" else enc) / max(cpu_us, 1e-9)
                verdict += f" (by CPU {by_cpu:.0%}: {'ok' if by_cpu >= least else 'BELOW'})"
            if fsync:
                want = f"not the target (fsync {fsync}: the CPU-bound figure) {want}"
            line += f"  {want}: {verdict}"
        print(line)


def _runs(sinks: list[str], file_fsync: str) -> list[str]:
    """The runs: the file sink once per fsync policy asked for (``file`` is the shipped
    ``batch``; ``file:never`` without fsync)."""
    out: list[str] = []
    for sink in sinks:
        if sink == "file" and file_fsync != "batch":
            out += ["file", "file:never"] if file_fsync == "both" else ["file:never"]
        else:
            out.append(sink)
    return out


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def _report_pg(results: list[tuple[str, int, float, float, float | None]],
               pg: PgFloor) -> None:
    """The postgres runs beside the server's own floor (``bench/_pg_floor.py``), and
    the ceiling of one worker on this machine's cores with that floor."""
    least = TARGETS["postgres"][1]
    cores = os.cpu_count() or 1
    print(f"\npostgres server floor (the sink's rows pre-encoded, COPY into the sink's table, "
          f"{READ_COUNT * PER_ENTRY:,} a transaction): {pg.rate:,.0f} records/s wall, of which "
          f"COMMIT (the WAL flush) {pg.commit_us:.2f} us/record; backend CPU "
          f"{pg.cpu_us:.2f} us/record = {pg.core_rate:,.0f} records/s of one core")
    for sink, workers, rate, cpu_us, server_us in results:
        if sink != "postgres" or server_us is None:
            continue
        # One backend per worker uses one core; worker and server share the cores.
        ceiling = min(pg.core_rate * workers, cores * 1e6 / (cpu_us + pg.cpu_us))
        print(f"postgres {workers} worker(s): {rate:,.0f} records/s = {rate / pg.rate:.0%} of the "
              f"server floor; worker CPU {cpu_us:.2f} + server CPU {server_us:.2f} us/record; "
              f"ceiling on {cores} idle cores {ceiling:,.0f} records/s (the server floor's CPU, "
              f"the worker's)")
        if workers != 1:
            continue
        if pg.rate < least:
            where = "at or above" if ceiling >= least else "below"
            print(f"verdict: {least:,.0f} records/s per worker was out of reach in this run: the "
                  f"server alone took the sink's rows at {pg.rate:,.0f}/s (wall); on idle cores "
                  f"the ceiling is {ceiling:,.0f} ({where} the target), the commits' WAL flush "
                  "aside")
        elif ceiling < least:
            print(f"verdict: {least:,.0f} records/s per worker is out of reach on this machine "
                  f"(ceiling {ceiling:,.0f}: the server takes {pg.cpu_us:.2f} us of one core per "
                  f"record into this table, the worker {cpu_us:.2f})")
        else:
            print(f"verdict: the ceiling ({ceiling:,.0f}) allows {least:,.0f} records/s per "
                  f"worker; this run {'reaches' if rate >= least else 'does not reach'} it "
                  f"({rate / pg.rate:.0%} of the server's wall floor in the same run)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
