"""Healthy sinks beside a hung one: ``python -m bench spool [--quick] [--records N] [--rounds R]``.

Runs the real daemon, pump and producers on a private ``redis-server``
with a small byte budget (``max_backlog_bytes`` 16 MiB, under a second of
the producers' records; batches of 100 records, producers
``full_policy: drop``), in ``--rounds`` rounds (3; ``--quick``: 1), each
round twice, in an order that alternates from round to round: once with
file and postgres sinks, once with an http sink beside them whose target
accepts connections and never answers (``HttpPeer`` stalled). Producers
are paced (at most 20,000 records/s each) and start once every sink's
worker reads the stream (its consumer is in its group): spawned workers
take seconds to start on a loaded machine, and records produced before
that would measure the pump's start, not the spool.

It prints, per round and as the median (min-max) over the rounds, each
healthy sink's throughput (records / seconds from the first record
produced until the sink holds every record the producers kept) and its
ratio with the hung sink to without it in the same round, the records the
producers dropped, the records each sink spooled, the CPU seconds each
process used while the producers ran and the sinks caught up, and the
hung sink's catch-up time once its target answers again (until it holds
every record). PostgreSQL at ``$COLLECTOR_TEST_PG_DSN`` (skipped when it
does not answer).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from collector.common.stream import DEFAULT_STREAM_KEY
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


def _reading(url: str, sinks: dict[str, Any]) -> bool:
    """True once each sink's group on the stream has a consumer (a worker that read)."""
    import redis

    r = redis.Redis.from_url(url)
    try:
        for sink in sinks:
            try:
                if not r.xinfo_consumers(DEFAULT_STREAM_KEY, sink):
                    return False
            except redis.ResponseError:  # no stream or no group yet
                return False
        return True
    finally:
        r.close()


def _cpu(pid: int | None, tree: bool = True) -> float:
    """CPU seconds (user + system) of ``pid`` and, with ``tree``, its live children."""
    if pid is None:
        return 0.0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)] if tree else [proc]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _cpu_now(daemon: Daemon, pump: Pump, redis_server: RedisServer) -> dict[str, float]:
    out = {"daemon": _cpu(daemon.proc.pid if daemon.proc else None),
           "pump supervisor": _cpu(pump.proc.pid if pump.proc else None, tree=False),
           "redis-server": _cpu(redis_server.proc.pid if redis_server.proc else None)}
    for sink, info in pump.readyz()[1]["sinks"].items():
        out[f"{sink} worker"] = sum(_cpu(pid) for pid in info["pids"])
    return out


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
                      trim_interval_s=0.2, max_deliveries=1000)  # budget: the daemon's
    result: dict[str, Any] = {}
    try:
        daemon.start()
        pump.start()
        wait_until(lambda: _reading(redis_server.url, sinks), 120,
                   "every sink's worker to read the stream", interval=0.1)
        cpu0 = _cpu_now(daemon, pump, redis_server)
        t0 = time.monotonic()
        producers = Producers.analytics(daemon.config, 2, records // 2, pace=PACE).start()
        result["dropped"] = dropped = producers.join(600)
        result["produced"] = records / (time.monotonic() - t0)
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
        cpu1 = _cpu_now(daemon, pump, redis_server)
        result["cpu"] = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
        for name, secs in done.items():
            result[name] = want / secs
        m = pump.metrics()
        result["spooled"] = {s: m.get(f'collector_pump_records_spooled_total{{sink="{s}"}}', 0)
                             for s in sinks}
        if hung:
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


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _print_round(i: int, base: dict[str, Any], hung: dict[str, Any]) -> None:
    print(f"round {i}:")
    print(f"  {'':26}{'healthy only':>14}{'+ hung http':>14}{'ratio':>8}")
    print(f"  {'produced records/s':26}{base['produced']:>14,.0f}{hung['produced']:>14,.0f}"
          f"{hung['produced'] / base['produced']:>8.2f}")
    for sink in ("file", "postgres"):
        if sink in base:
            print(f"  {sink + ' records/s':26}{base[sink]:>14,.0f}{hung[sink]:>14,.0f}"
                  f"{hung[sink] / base[sink]:>8.2f}")
    print(f"  {'producer drops':26}{base['dropped']:>14}{hung['dropped']:>14}")
    for sink in hung["spooled"]:
        print(f"  {sink + ' records spooled':26}{base['spooled'].get(sink, 0):>14,.0f}"
              f"{hung['spooled'][sink]:>14,.0f}")
    for name in hung["cpu"]:
        print(f"  {'CPU s ' + name:26}{base['cpu'].get(name, 0.0):>14.1f}"
              f"{hung['cpu'][name]:>14.1f}")
    print(f"  {'CPU s total':26}{sum(base['cpu'].values()):>14.1f}"
          f"{sum(hung['cpu'].values()):>14.1f}")
    print(f"  hung http sink caught up in {hung['catch_up_s']:.1f} s after its target "
          f"answered, {hung['http_duplicates']} duplicates")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench spool", description=__doc__)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=None, help="3; --quick: 1")
    ap.add_argument("--quick", action="store_true", help="40,000 records, 1 round")
    args = ap.parse_args(argv)
    records = 40_000 if args.quick else args.records
    rounds = args.rounds or (1 if args.quick else 3)
    use_pg = _pg_ok()
    tmp = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        for i in range(rounds):
            got = {}
            for hung in ((False, True) if i % 2 == 0 else (True, False)):
                got[hung] = run(tmp / f"{i}-{'hung' if hung else 'base'}", records, hung=hung,
                                use_pg=use_pg)
            pairs.append((got[False], got[True]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{records} records, 2 producers (full_policy drop, paced at most "
          f"{2 * PACE[0] / PACE[1]:,.0f} records/s), max_backlog_bytes {BUDGET}, "
          f"{rounds} round(s)")
    for i, (base, hung) in enumerate(pairs, 1):
        _print_round(i, base, hung)
    print("over the rounds, median (min-max):")
    for sink in ("file", "postgres"):
        if sink in pairs[0][0]:
            print(f"  {sink}: + hung http / healthy only = "
                  f"{_median([h[sink] / b[sink] for b, h in pairs])}")
    print(f"  producer drops: healthy only {[b['dropped'] for b, _ in pairs]}, "
          f"+ hung http {[h['dropped'] for _, h in pairs]}")
    print(f"  hung http catch-up s: {_median([h['catch_up_s'] for _, h in pairs])}")
    return 0
