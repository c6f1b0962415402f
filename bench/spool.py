"""Healthy sinks beside a hung one: ``python -m bench spool [--quick] [--records N]``.

Runs the real daemon, pump and producers twice on a private ``redis-server``
with a small byte budget (``max_backlog_bytes`` 16 MiB, under a second of
the producers' records; batches of 100 records, producers
``full_policy: drop``): once with file and postgres sinks, once with an
http sink beside them whose target accepts connections and never answers
(``HttpPeer`` stalled). Producers are paced (at most 20,000 records/s
each), so a sink that keeps up shows about that rate. It prints, side by
side, each healthy sink's throughput (records / seconds from the first
record produced until the sink holds every record the producers kept),
the records the producers dropped, the records the hung sink spooled, and
its catch-up time once the target answers again (until it holds every
record). PostgreSQL at ``$COLLECTOR_TEST_PG_DSN``
(skipped when it does not answer).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from collector.testing import (
    Daemon,
    HttpPeer,
    Producers,
    Pump,
    RedisServer,
    drop_tables,
    free_port,
    jsonl_lines,
    pg_dsn,
    record_key,
    wait_until,
)

BUDGET = 16 << 20
PACE = (100, 0.005)  # per producer: at most 20,000 records/s


def _pg_count(table: str) -> int:
    import psycopg

    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if row is None or row[0] is None:
            return 0
        got = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(got[0]) if got else 0


def _pg_ok() -> bool:
    try:
        import psycopg

        with psycopg.connect(pg_dsn(), connect_timeout=3):
            return True
    except Exception:
        return False


def run(work: Path, records: int, hung: bool, use_pg: bool) -> dict[str, Any]:
    work.mkdir(parents=True)
    (work / "rings").mkdir(mode=0o700)
    redis_server = RedisServer(work / "redis", appendonly=False).start()
    table = f"bench_spool_{os.getpid()}_{free_port()}"
    http_seen: Counter[tuple[int, int]] = Counter()
    http = HttpPeer(on_items=lambda items: http_seen.update(
        record_key(i["record"]) for i in items)).start()
    http.mode = "stall"
    out = work / "file.jsonl"
    sinks: dict[str, Any] = {"file": {"meta": {"path": str(out)}}}
    if use_pg:
        drop_tables(table)
        sinks["postgres"] = {"meta": {"dsn": pg_dsn(), "table": table}}
    if hung:
        sinks["http"] = {"type": "http", "timeout_s": 5,
                         "meta": {"url": http.url, "health_url": f"{http.base}/health",
                                  "max_request_s": 5}}
    daemon = Daemon.write(work, redis_server.url, full_policy="drop",
                          max_backlog_bytes=BUDGET, ring_capacity_bytes=16 << 20, batch_size=100,
                          log=work / "daemon.log")
    pump = Pump.write(work, redis_server.url, sinks, log=work / "pump.log",
                      max_backlog_bytes=BUDGET, trim_interval_s=0.2, max_deliveries=1000)
    result: dict[str, Any] = {}
    try:
        daemon.start()
        pump.start()
        t0 = time.monotonic()
        producers = Producers.analytics(daemon.config, 2, records // 2, pace=PACE).start()
        result["dropped"] = dropped = producers.join(600)
        want = records - dropped
        done: dict[str, float] = {}

        def healthy_done() -> bool:
            now = time.monotonic() - t0
            if "file" not in done and out.exists() and jsonl_lines(out) >= want:
                done["file"] = now
            if use_pg and "postgres" not in done and _pg_count(table) >= want:
                done["postgres"] = now
            return len(done) == (2 if use_pg else 1)
        wait_until(healthy_done, 600, "the healthy sinks", interval=0.1)
        for name, secs in done.items():
            result[name] = want / secs
        if hung:
            spooled = pump.metrics().get('collector_pump_records_spooled_total{sink="http"}', 0)
            result["spooled"] = spooled
            t1 = time.monotonic()
            http.mode = "ok"
            http.release.set()
            wait_until(lambda: len(http_seen) >= want, 600, "the http sink to catch up",
                       interval=0.1)
            result["catch_up_s"] = time.monotonic() - t1
            result["http_duplicates"] = sum(http_seen.values()) - len(http_seen)
        pump.stop()
        daemon.stop()
    finally:
        pump.close()
        daemon.close()
        http.stop()
        redis_server.kill()
        if use_pg:
            drop_tables(table)
    return result


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench spool", description=__doc__)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="40,000 records")
    args = ap.parse_args(argv)
    records = 40_000 if args.quick else args.records
    use_pg = _pg_ok()
    tmp = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    try:
        base = run(tmp / "base", records, hung=False, use_pg=use_pg)
        hung = run(tmp / "hung", records, hung=True, use_pg=use_pg)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{records} records, 2 producers (full_policy drop, paced at most "
          f"{2 * PACE[0] / PACE[1]:,.0f} records/s), max_backlog_bytes {BUDGET}")
    print(f"{'':24}{'healthy only':>16}{'+ hung http':>16}{'ratio':>8}")
    for sink in ("file", "postgres"):
        if sink in base:
            print(f"{sink + ' records/s':24}{base[sink]:>16,.0f}{hung[sink]:>16,.0f}"
                  f"{hung[sink] / base[sink]:>8.2f}")
    print(f"{'producer drops':24}{base['dropped']:>16}{hung['dropped']:>16}")
    print(f"hung http sink: spooled {hung['spooled']:,.0f} records, caught up in "
          f"{hung['catch_up_s']:.1f} s after its target answered, "
          f"{hung['http_duplicates']} duplicates")
    return 0
