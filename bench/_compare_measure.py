"""``bench compare``: the designs, and measurements (a), (c) and (d) (see ``bench.compare``)."""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from collector.config import CollectorConfig
from collector.testing import Daemon, RedisServer, authz_record, wait_until

from . import _designs as designs
from . import _harness as h

# Ours as shipped: the daemon's default pool, flush and scan settings (not the
# test suite's faster ones); 64 MiB rings so the tight loops of (a) and (c)
# rarely fill them; no backlog limit in the way.
_SHIPPED = CollectorConfig.model_fields
DAEMON_SETTINGS: dict[str, Any] = {
    **{k: _SHIPPED[k].default for k in ("pool_size", "batch_size", "flush_interval_ms",
                                        "max_flush_interval_ms", "scan_interval_ms")},
    "ring_capacity_bytes": 64 * 1024 * 1024,
    "max_backlog_bytes": 1 << 40,
}


# ---------------------------------------------------------------------------
# designs


def make_design(name: str, env: dict[str, str]) -> Any:
    """The design ``name`` behind ``start()`` / ``record(dict) -> bool`` / ``stop()``.

    ``env``: ``redis_url`` (every design that writes to Redis itself) and
    ``collector_yaml`` (ours: the config shared with the daemon).
    """
    return designs.make(name, redis_url=env.get("redis_url") or None,
                        collector_config=env.get("collector_yaml") or None)


def count_in_redis(name: str, client: Any) -> int:
    """Records design ``name`` has put into Redis so far."""
    return int(designs.count_in_redis(name, client))


def clear_redis(client: Any) -> None:
    client.flushall()


def _records(producer: int, n: int) -> list[dict[str, Any]]:
    return [authz_record(producer, i) for i in range(n)]


# ---------------------------------------------------------------------------
# (a) tight loop, in a fresh process per design


def tight_loop(name: str, env: dict[str, str], n: int) -> dict[str, Any]:
    """(a) ``record()`` in a tight loop in a fresh process: latency and CPU per record."""
    return h.run_in_child(_tight_loop_child, name, env, n)


def _tight_loop_child(name: str, env: dict[str, str], n: int, conn: Any) -> None:
    try:
        recs = _records(0, 1000)
        d = make_design(name, env)
        d.start()
        for i in range(min(2000, n)):
            d.record(recs[i % 1000])
        gc.collect()
        gc.disable()
        # latency: every call timed on its own; a call that dropped the record
        # (a full buffer) is not a sample: wait 0.2 ms and offer it again
        ns = time.perf_counter_ns
        lat = [0] * n
        rec = d.record
        refused = 0
        for i in range(n):
            r = recs[i % 1000]
            while True:
                t = ns()
                ok = rec(r)
                dt = ns() - t
                if ok:
                    break
                refused += 1
                time.sleep(0.0002)
            lat[i] = dt
        # CPU: an untimed loop (refused records offered again after a sleep),
        # then stop(), which drains background threads. A sleep is not free on
        # a virtual machine (tens of µs of CPU to wake up): the main thread's
        # own CPU in these retry sleeps is the harness's, not the design's, and
        # is taken out (the design's background threads keep counting).
        harness_cpu = 0.0
        thread_time = time.thread_time
        cpu0 = time.process_time()
        w0 = time.perf_counter()
        for i in range(n):
            r = recs[i % 1000]
            while not rec(r):
                refused += 1
                t = thread_time()
                time.sleep(0.0002)
                harness_cpu += thread_time() - t
        d.stop()
        cpu = time.process_time() - cpu0 - harness_cpu
        wall = time.perf_counter() - w0
        gc.enable()
        lat.sort()
        conn.send({
            "p50_ns": lat[n // 2], "p99_ns": lat[int(n * 0.99)],
            "cpu_ns_per_record": cpu * 1e9 / n,
            "wall_ns_per_record": wall * 1e9 / n,
            "refused_then_retried": refused, "n": n,
        })
    except BaseException as exc:  # report, never hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise




# ---------------------------------------------------------------------------
# (c) end to end into Redis


def _e2e_child(name: str, env: dict[str, str], producer: int, n: int, go: Any,
               conn: Any) -> None:
    try:
        recs = _records(producer, 1000)
        d = make_design(name, env)
        d.start()
        conn.send({"ready": True})
        go.wait()
        refused = 0
        rec = d.record
        for i in range(n):
            r = recs[i % 1000]
            while not rec(r):  # a full buffer: offer the record again shortly
                refused += 1
                time.sleep(0.0002)
        d.stop()
        conn.send({"accepted": n, "refused": refused})
    except BaseException as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def _receive(pipes: list[Any], timeout: float, name: str, late: str) -> list[dict[str, Any]]:
    """One message from each child's pipe: ``TimeoutError`` saying ``late`` if one
    is silent, ``RuntimeError`` if one reports an error."""
    msgs = []
    for rx in pipes:
        if not rx.poll(timeout):
            raise TimeoutError(f"{name}: {late}")
        msg = rx.recv()
        if "error" in msg:
            raise RuntimeError(f"{name}: {msg['error']}")
        msgs.append(msg)
    return msgs


def end_to_end(name: str, env: dict[str, str], producers: int, n: int,
               redis: RedisServer, daemon: Daemon | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    client = redis.client(socket_timeout=30)
    clear_redis(client)
    go = ctx.Event()
    pipes, procs = [], []
    for i in range(producers):
        rx, tx = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_e2e_child, args=(name, env, i, n, go, tx))
        p.start()
        pipes.append(rx)
        procs.append(p)
    try:
        _receive(pipes, 120, name, "a producer did not start")
        if name == "ours" and daemon is not None:
            # start the clock once the daemon has found every producer's ring
            wait_until(lambda: daemon.readyz()[1].get("rings", 0) >= producers,
                       30, "the daemon to find the producers' rings")
        base = _daemon_written(daemon) if name == "ours" and daemon is not None else 0
        t0 = time.perf_counter()
        go.set()
        done = _receive(pipes, 600, name, "a producer did not finish")
        accepted = sum(msg["accepted"] for msg in done)
        refused = sum(msg["refused"] for msg in done)
        if name == "ours" and daemon is not None:
            # the daemon's own counter (cheap to poll); verified on the stream below
            wait_until(lambda: _daemon_written(daemon) - base >= accepted, 300,
                       f"{name}: {accepted} records written by the daemon", interval=0.01)
        else:
            wait_until(lambda: count_in_redis(name, client) >= accepted, 300,
                       f"{name}: {accepted} records in Redis", interval=0.01)
        elapsed = time.perf_counter() - t0
        in_redis = count_in_redis(name, client)
        if in_redis < accepted:
            raise RuntimeError(f"{name}: {accepted} records accepted, {in_redis} in Redis")
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    clear_redis(client)
    return {"records_per_s": accepted / elapsed, "accepted": accepted,
            "refused_then_retried": refused, "seconds": elapsed}


def _daemon_written(daemon: Daemon) -> int:
    written = daemon.metrics().get("collector_daemon_records_written_total")
    if written is None:
        raise RuntimeError("collector-daemon /metrics has no "
                           "collector_daemon_records_written_total")
    return int(written)


# ---------------------------------------------------------------------------
# (d) record_hit -> sink latency for ours


def _latency_child(collector_yaml: str, rate: float, seconds: float, conn: Any) -> None:
    from collector import Analytics

    a = Analytics.from_config(collector_yaml)
    a.start()
    n = int(rate * seconds)
    t0 = time.monotonic()
    sent = 0
    for seq in range(n):
        r = authz_record(9, seq)
        r["sent_at"] = time.time()
        sent += a.record_hit(r)
        ahead = (seq + 1) / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    a.stop()
    conn.send({"sent": sent})


def sink_latency(workdir: Path, redis_url: str, collector_yaml: Path, rate: float,
                 seconds: float) -> dict[str, Any]:
    # a fresh sink file and an empty Redis for every run, so the pump reads only
    # this run's records (earlier sections leave records in the stream)
    out = Path(tempfile.mkdtemp(prefix="lat-", dir=workdir))
    path = out / "lat.jsonl"
    redis_client = redis.Redis.from_url(redis_url)
    redis_client.flushall()
    pump = h.pump(workdir, redis_url, {
        "file": {"type": "file", "workers": 1,
                 "meta": {"path": str(path), "format": "jsonl", "fsync": "never"}}},
        read_block_s=0.05).start()
    ctx = mp.get_context("spawn")
    rx, tx = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_latency_child, args=(str(collector_yaml), rate, seconds, tx))
    lat: list[float] = []
    try:
        p.start()
        buf = b""
        fh = None
        deadline = time.monotonic() + seconds + 120
        sent = None
        while time.monotonic() < deadline:
            if fh is None and path.exists():
                fh = open(path, "rb")
            chunk = fh.read() if fh is not None else b""
            now = time.time()
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    try:
                        lat.append(now - float(json.loads(line)["sent_at"]))
                    except (ValueError, KeyError):
                        pass
            if sent is None and rx.poll():
                sent = rx.recv()["sent"]
            if sent is not None and len(lat) >= sent:
                break
            time.sleep(0.002)
        if fh is not None:
            fh.close()
    finally:
        p.join(30)
        pump.stop()
        redis_client.flushall()
    lat.sort()
    if not lat:
        raise RuntimeError("no record reached the sink")
    return {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
            "records": len(lat), "sent": sent}
