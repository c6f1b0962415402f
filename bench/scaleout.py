"""Scaling out: records/s end to end on one Redis node vs a 3-master cluster, and what
replica acknowledgement (``WAIT``) costs per batch.

``python -m bench scaleout [--quick]`` runs, one setup after the other on this
machine, producer processes writing ~450-byte records into their rings as
fast as they can (as ``bench daemon``) -> ``collector-daemon`` -> Redis ->
``collector-pump`` (a ``null`` sink, ``workers`` per setup) until the pump has
delivered every record:

1. one node, one stream shard;
2. one node with a replica, ``min_replicas_acked: 1``;
3. a cluster of 3 masters with a replica each, 3 shards;
4. the same cluster with ``min_replicas_acked: 1``.

It prints records/s for each, the ratios to setup 1 and the flushers' mean
round trip per batch (``collector_daemon_flush_seconds``; batches grow with
the load, so these are not per equal batch). The cost of WAIT per batch is
measured apart, on the same servers: the flusher's own round trip
(``StreamWriter.send``) of one 1,000-record batch, 300 times without and
300 times with ``WAIT 1``, interleaved, medians side by side.
Every node, the daemon and the pump share this machine's cores, so a cluster
here shows the cost of its client-side work, not the capacity of three
machines.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

import msgpack

from bench.daemon import _producer
from collector.common import redisconn
from collector.common.stream import encode_entry
from collector.daemon._xadd import StreamWriter
from collector.testing import (
    Daemon,
    Pump,
    RedisClusterNodes,
    RedisServer,
    authz_record,
    wait_until,
)

SETUPS = ("1 node", "1 node + replica, WAIT 1", "cluster 3 masters", "cluster, WAIT 1")


def _delivered(pump: Pump) -> float:
    return sum(v for k, v in pump.metrics().items()
               if k.startswith("collector_pump_records_out_total"))


def _flush_mean(daemon: Daemon) -> float:
    m = daemon.metrics()
    total = sum(v for k, v in m.items() if k.startswith("collector_daemon_flush_seconds_sum"))
    count = sum(v for k, v in m.items()
                if k.startswith("collector_daemon_flush_seconds_count"))
    return total / count if count else 0.0


def wait_cost(url: str, key: str, rounds: int = 300) -> tuple[float, float]:
    """Median seconds of one 1,000-record batch's round trip without and with WAIT 1."""
    fields = encode_entry("b" * 32, 0, [msgpack.packb(authz_record(0, s))
                                        for s in range(1000)])
    client = redisconn.connect(url)
    writers = [StreamWriter(client, replicas=r, timeout_ms=1000) for r in (0, 1)]
    times: list[list[float]] = [[], []]
    for i in range(2 * rounds + 20):  # interleaved, the first 20 as a warm-up
        which = i % 2
        t0 = time.perf_counter()
        writers[which].send(key.encode(), fields)
        if i >= 20:
            times[which].append(time.perf_counter() - t0)
        if i % 100 == 99:
            client.delete(key)
    client.delete(key)
    for t in times:
        t.sort()
    return times[0][len(times[0]) // 2], times[1][len(times[1]) // 2]


def run_setup(work: Path, url: str, shards: int, replicas_acked: int, producers: int,
              per_producer: int, workers: int) -> tuple[float, float]:
    """(records/s from the producers' start to the pump's last delivery, mean flush s)."""
    rings = work / "rings"
    rings.mkdir(mode=0o700, parents=True)
    daemon = Daemon.write(work, url, base={
        "pool_size": 2, "log_level": "warning", "scan_interval_ms": 50,
        "stream_shards": shards, "min_replicas_acked": replicas_acked,
        "max_backlog_bytes": 1 << 34})
    pump = Pump.write(work / "pump", url, {"null": {"workers": workers}}, base={
        "read_block_s": 0.1, "read_count": 50, "log_level": "warning",
        "stream_shards": shards, "trim_interval_s": 1})
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(producers)]
    cpus = [ctx.Value("d", 0.0) for _ in range(producers)]
    procs = [ctx.Process(target=_producer, args=(str(rings), p, per_producer, 8 << 20,
                                                 readies[p], go, cpus[p]), daemon=True)
             for p in range(producers)]
    try:
        daemon.start(timeout=60)
        pump.start(timeout=60)
        for p in procs:
            p.start()
        for e in readies:
            if not e.wait(60):
                raise RuntimeError("a producer did not start")
        total = producers * per_producer
        t0 = time.perf_counter()
        go.set()
        wait_until(lambda: _delivered(pump) >= total, 600, "the pump delivered every record",
                   interval=0.05)
        elapsed = time.perf_counter() - t0
        return total / elapsed, _flush_mean(daemon)
    finally:
        for p in procs:
            p.join(30)
        pump.stop(60)
        pump.close()
        daemon.stop(60)
        daemon.close()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench scaleout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer records (a smoke run)")
    ap.add_argument("--records", type=int, default=None,
                    help="records per setup (default 400,000; quick 60,000)")
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="pump workers of the null sink")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per setup, the median kept (default 3; quick 1)")
    args = ap.parse_args(argv)
    records = args.records or (60_000 if args.quick else 400_000)
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("redis-server and redis-cli are needed: run `sh .ci/setup` first",
              file=sys.stderr)
        return 2
    per = records // args.producers
    repeat = args.repeat or (1 if args.quick else 3)

    def median_run(work: Path, url: str, shards: int, acked: int) -> tuple[float, float]:
        runs = sorted(run_setup(work / str(i), url, shards, acked, args.producers, per,
                                args.workers) for i in range(repeat))
        return runs[len(runs) // 2]

    base = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    results: dict[str, tuple[float, float]] = {}
    waits: dict[str, tuple[float, float]] = {}
    try:
        primary = RedisServer(base / "single", appendonly=False).start()
        replica = RedisServer(base / "replica", appendonly=False,
                              extra=["--replicaof", "127.0.0.1", str(primary.port)]).start()
        wait_until(lambda: primary.client().info("replication")["connected_slaves"] == 1, 30,
                   "the replica connected")
        try:
            # The replica is there for both: setup 1 pays its replication too, not WAIT.
            for name, acked, sub in ((SETUPS[0], 0, "a"), (SETUPS[1], 1, "b")):
                primary.client().flushall()
                results[name] = median_run(base / sub, primary.url, 1, acked)
            waits["1 node + replica"] = wait_cost(primary.url, "bench:wait")
        finally:
            replica.kill()
            primary.kill()
        cluster = RedisClusterNodes(base / "cluster", node_timeout_ms=5000,
                                    appendonly=False).start()
        try:
            for name, acked, sub in ((SETUPS[2], 0, "c"), (SETUPS[3], 1, "d")):
                results[name] = median_run(base / sub, cluster.url, 3, acked)
            waits["cluster"] = wait_cost(cluster.url, "bench:wait:{0}")
        finally:
            cluster.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    one = results[SETUPS[0]][0]
    print(f"end to end (producers -> daemon -> Redis -> pump -> null), {records:,} records, "
          f"{args.producers} producers, pump workers {args.workers}, median of {repeat}:")
    for name in SETUPS:
        rate, flush = results[name]
        print(f"  {name:26s} {rate:10,.0f} records/s  ({rate / one:4.2f}x 1 node)  "
              f"flush round trip per batch {flush * 1e3:6.2f} ms")
    for where, (without, with_wait) in waits.items():
        print(f"  one 1,000-record batch on {where}: {without * 1e3:.2f} ms, with WAIT 1 "
              f"{with_wait * 1e3:.2f} ms: {(with_wait - without) * 1e3:+.2f} ms "
              f"({with_wait / without:.2f}x)")
    print(f"  cluster / 1 node: {results[SETUPS[2]][0] / one:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
