"""collector-daemon end to end: real producer processes, a real daemon, a real Redis.

Every test counts the records that reached Redis by (producer, seq) and
reports lost and duplicated ones.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import psutil
import redis

import ringbuf
from collector.common.stream import shard_keys
from collector.testing import (
    Daemon,
    Producers,
    RedisServer,
    account,
    producer_ids,
    stream_record_count,
    tally_stream,
    wait_until,
)

KEY = "collector:analytics"


def test_end_to_end_4_producers_x_100k(tmp_path: Path, rings_dir: Path,
                                       redis_server: RedisServer) -> None:
    n, count = 4, 100_000
    daemon = Daemon.write(tmp_path, redis_server.url).start()
    try:
        Producers.ring(rings_dir, n, count).start().join()
        client = redis_server.client()
        wait_until(lambda: stream_record_count(client) >= n * count, 120, "every record in Redis")
        seen = tally_stream(client)  # also checks every record decodes to what was sent
        acc = account(seen, producer_ids(n, count))
        print(f"end to end: sent={n * count} received={sum(seen.values())} {acc}")
        assert acc.ok
        # Finished (closed) producers: their rings are removed once drained.
        wait_until(lambda: not list(rings_dir.glob("*.ring")), 30, "drained rings removed")
        m = daemon.metrics()
        assert m["collector_daemon_records_written_total"] == n * count
        assert m["collector_daemon_rings_removed_total"] == n
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_the_same_config_file_drives_analytics_and_the_daemon(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    """collector.Analytics.from_config(file) in 2 processes -> collector-daemon --config file."""
    n, count = 2, 20_000
    daemon = Daemon.write(tmp_path, redis_server.url, full_policy="block",
                          block_timeout_ms=5_000, ring_capacity_bytes=1 << 20).start()
    try:
        producers = Producers.analytics(daemon.config, n, count).start()
        producers.join()
        assert [d.value for d in producers.drops] == [0] * n
        client = redis_server.client()
        wait_until(lambda: stream_record_count(client) >= n * count, 60, "every record")
        acc = account(tally_stream(client), producer_ids(n, count))
        print(f"Analytics -> daemon: {acc}")
        assert acc.ok
        wait_until(lambda: not list(rings_dir.glob("*.ring")), 30, "stopped clients' rings removed")
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_graceful_stop_mid_load_loses_nothing(tmp_path: Path, rings_dir: Path,
                                              redis_server: RedisServer) -> None:
    n, count = 3, 40_000
    client = redis_server.client()
    daemon = Daemon.write(tmp_path, redis_server.url).start()
    cfg = daemon.config
    try:
        procs = Producers.ring(rings_dir, n, count, pace=(200, 0.01)).start()
        wait_until(lambda: stream_record_count(client) > 5_000, 60, "the load to be flowing")
        assert daemon.stop() == 0  # SIGTERM: drains every ring, exits 0
        assert "collector-daemon stopped." in daemon.log_text()
        before = stream_record_count(client)
        # Producers keep writing while no daemon runs; the next start sends it all.
        daemon = Daemon(cfg, log=tmp_path / "daemon2.log").start()
        procs.join()
        wait_until(lambda: stream_record_count(client) >= n * count, 60, "every record")
        seen = tally_stream(client)
        acc = account(seen, producer_ids(n, count))
        print(f"graceful stop: in Redis at stop={before} {acc}")
        assert acc.ok
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_http_endpoints(tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    daemon = Daemon.write(tmp_path, redis_server.url, pool_size=2).start()
    try:
        Producers.ring(rings_dir, 1, 2_000).start().join()
        wait_until(lambda: stream_record_count(redis_server.client()) >= 2_000, 30, "records")
        code, body = daemon.get("/healthz")
        assert (code, json.loads(body)) == (200, {"status": "ok"})
        code, detail = daemon.readyz()
        assert code == 200 and detail["status"] == "ready"
        assert detail["redis"]["reachable"] is True
        assert [f["alive"] for f in detail["flushers"]] == [True, True]
        text = daemon.get("/metrics")[1].decode()
        for name in ("collector_daemon_records_read_total",
                     "collector_daemon_records_written_total",
                     "collector_daemon_batches_written_total",
                     "collector_daemon_written_bytes_total",
                     'collector_daemon_dropped_records_total{cause="full"}',
                     'collector_daemon_dropped_records_total{cause="oversize"}',
                     "collector_daemon_flush_seconds_bucket",
                     "collector_daemon_flush_seconds_count",
                     "collector_daemon_redis_errors_total",
                     'collector_daemon_stream_backlog_entries{shard="collector:analytics"}',
                     "collector_daemon_flushers_alive 2.0"):
            assert name in text, f"{name} missing from /metrics"
        m = daemon.metrics()
        assert m["collector_daemon_records_written_total"] == 2_000
        # the ring path its readers take (this environment's, ringbuf.ring_path())
        assert m[f'collector_daemon_ring_path{{path="{ringbuf.ring_path()}"}}'] == 1
        assert f"ring_path={ringbuf.ring_path()}" in daemon.log_text()
        assert daemon.get("/nope")[0] == 404
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.close()


def test_ring_fill_is_reported_per_ring(tmp_path: Path, rings_dir: Path,
                                        redis_server: RedisServer) -> None:
    """A live producer's ring shows in /metrics; nothing is sent past the budget."""
    daemon = Daemon.write(tmp_path, redis_server.url, max_backlog_entries=1,
                          batch_size=10).start()
    procs = Producers.ring(rings_dir, 1, 500, close=False).start()
    try:
        def pending() -> float:
            return sum(v for k, v in daemon.metrics().items()
                       if k.startswith("collector_daemon_ring_pending_records{"))
        wait_until(lambda: pending() > 0, 30, "pending records reported")
        assert any(k.startswith("collector_daemon_ring_fill_ratio{ring=")
                   for k in daemon.metrics())
    finally:
        procs.kill()
        daemon.close()


def test_embedded_redis_mode(tmp_path: Path, rings_dir: Path) -> None:
    """No redis_url: the daemon runs its own redis-server on a private unix socket."""
    run = tmp_path / "run"
    daemon = Daemon.write(tmp_path, None).start()
    try:
        sock = run / "redis.sock"
        assert stat.S_IMODE(run.stat().st_mode) == 0o700
        assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0
        Producers.ring(rings_dir, 2, 5_000).start().join()
        client = redis.Redis(unix_socket_path=str(sock))
        wait_until(lambda: stream_record_count(client) >= 10_000, 60, "every record")
        acc = account(tally_stream(client), producer_ids(2, 5_000))
        print(f"embedded redis: {acc}")
        assert acc.ok
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("port")["port"] == "0"
        # the stream's budget is half of what the embedded Redis may hold; never evicts
        assert client.config_get("maxmemory")["maxmemory"] == str(2 * (256 << 20))
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        def redis_pids() -> list[int]:
            assert daemon.proc is not None
            return [c.pid for c in psutil.Process(daemon.proc.pid).children()
                    if "redis-server" in " ".join(c.cmdline())]
        (first_pid,) = redis_pids()
        # The supervisor restarts its redis-server when it dies; nothing is lost.
        os.kill(first_pid, signal.SIGKILL)
        wait_until(lambda: redis_pids() and redis_pids()[0] != first_pid, 30,
                   "a new embedded redis-server")
        wait_until(daemon.ready, 30, "ready again")
        Producers.ring(rings_dir, 2, 5_000, first=2).start().join()
        wait_until(lambda: stream_record_count(client) >= 20_000, 60, "every record")
        acc = account(tally_stream(client), producer_ids(4, 5_000))
        print(f"embedded redis killed and restarted: {acc}")
        assert acc.ok
        assert "The embedded redis-server died; restarting it." in daemon.log_text()
        (pid,) = redis_pids()
        assert daemon.stop() == 0
        # The embedded server was stopped with the daemon.
        wait_until(lambda: not psutil.pid_exists(pid)
                   or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                   10, "the embedded redis-server to stop")
        assert (run / "appendonlydir").is_dir() or any(run.glob("*.aof*"))
    finally:
        daemon.close()


def test_rings_dir_is_created_private(tmp_path: Path, redis_server: RedisServer) -> None:
    rings = tmp_path / "new" / "rings"
    daemon = Daemon.write(tmp_path, redis_server.url, rings_dir=str(rings)).start()
    try:
        assert stat.S_IMODE(rings.stat().st_mode) == 0o700
        assert rings.stat().st_uid == os.geteuid()
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_shutdown_with_redis_down_leaves_records_for_the_next_start(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    """SIGTERM cannot drain while Redis is down: exit 0 after shutdown_timeout_s, data kept.

    Then a second daemon that cannot drain (backlog budget full) gets a second
    SIGTERM: it exits at once (code 1). A third start sends everything.
    """
    n, count = 2, 5_000
    client = redis_server.client()
    daemon = Daemon.write(tmp_path, redis_server.url, shutdown_timeout_s=1,
                          redis_timeout_s=0.5, startup_redis_wait_s=30).start()
    cfg = daemon.config
    try:
        redis_server.kill()
        Producers.ring(rings_dir, n, count).start().join()

        def pending() -> float:
            return sum(v for k, v in daemon.metrics().items()
                       if k.startswith("collector_daemon_ring_pending_records{"))
        wait_until(lambda: pending() == n * count, 30, "every record pending in the rings")
        assert daemon.stop() == 0  # cannot drain: gives up after shutdown_timeout_s
        assert f"records_left_in_rings={n * count} " in daemon.log_text()

        # Second daemon: a full backlog budget keeps it from draining; two signals.
        redis_server.start()
        dummy = client.xadd("collector:analytics", {"dummy": "1"})
        daemon = Daemon.write(tmp_path / "second", redis_server.url, rings_dir=str(rings_dir),
                              max_backlog_entries=1, shutdown_timeout_s=60,
                              log=tmp_path / "daemon2.log").start()
        wait_until(lambda: daemon.metrics()["collector_daemon_backpressure_total"] > 0, 30,
                   "pushback")
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: "Stopping: draining" in daemon.log_text(), 30, "the first signal")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 1  # at once, not after shutdown_timeout_s
        assert "Second stop signal" in daemon.log_text()
        assert client.xlen("collector:analytics") == 1
        client.xdel("collector:analytics", dummy)
        redis_server.stop()  # graceful: the XDEL reaches the append-only file (a kill can lose it)

        redis_server.start()
        daemon = Daemon(cfg, log=tmp_path / "daemon3.log").start()
        wait_until(lambda: stream_record_count(client) >= n * count, 60, "every record")
        acc = account(tally_stream(client), producer_ids(n, count))
        print(f"stop with Redis down, then a forced stop: {acc}")
        assert acc.lost == 0 and acc.unexpected == 0 and acc.duplicated <= 2 * 1000
        assert daemon.stop() == 0
        wait_until(lambda: not list(rings_dir.glob("*.ring")), 30, "drained rings removed")
    finally:
        daemon.close()


def test_sharded_stream_json_logs_and_sighup(tmp_path: Path, rings_dir: Path,
                                            redis_server: RedisServer) -> None:
    n, count, shards = 4, 5_000, 2
    daemon = Daemon.write(tmp_path, redis_server.url, stream_shards=shards,
                          log_format="json").start()
    try:
        daemon.signal(signal.SIGHUP)  # restart-only: logged, ignored
        Producers.ring(rings_dir, n, count).start().join()
        client = redis_server.client()
        keys = shard_keys(KEY, shards)
        wait_until(lambda: stream_record_count(client, keys) >= n * count, 60, "records")
        seen = tally_stream(client, keys)
        assert account(seen, producer_ids(n, count)).ok
        lengths = [client.xlen(f"collector:analytics:{{{i}}}") for i in range(shards)]
        assert sum(lengths) > 0 and client.xlen("collector:analytics") == 0
        assert daemon.ready()
        assert daemon.stop() == 0
        lines = [json.loads(line) for line in daemon.log_text().splitlines() if line.strip()]
        assert all({"ts", "level", "proc", "msg"} <= set(x) for x in lines)
        assert any("SIGHUP ignored" in x["msg"] for x in lines)
    finally:
        daemon.close()


def _entry_sizes(client: redis.Redis) -> list[int]:
    return [int(f[b"n"]) for _, f in client.xrange("collector:analytics")]


def test_a_fast_ring_goes_in_full_batches_without_waiting_for_the_interval(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    """With a 60 s flush interval, 2,000 records written at once arrive as ten
    full batches of batch_size=200, long before the interval (the flusher wakes
    when a batch is full, not only when it is due)."""
    n, count = 1, 2_000
    daemon = Daemon.write(tmp_path, redis_server.url, pool_size=1, batch_size=200,
                          flush_interval_ms=60_000, max_flush_interval_ms=60_000).start()
    # The producer stays alive with its ring open: a closed ring would be sent
    # at once (nothing more can come), which is not what this test is about.
    producers = Producers.ring(rings_dir, n, count, close=False).start()
    try:
        client = redis_server.client()
        wait_until(lambda: stream_record_count(client) >= count, 30,
                   "every record, well within the 60 s flush interval")
        acc = account(tally_stream(client), producer_ids(n, count))
        print(f"fast ring: {acc} batches={_entry_sizes(client)}")
        assert acc.ok
        assert _entry_sizes(client) == [200] * 10
    finally:
        producers.kill()
        daemon.stop()


def test_a_trickle_is_batched_and_every_record_arrives(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    """One record every 10 ms with a 300 ms flush interval: the flusher sleeps
    between looks, so records share stream entries (about 30 each), and the
    last ones go out without more records behind them."""
    n, count = 1, 200
    daemon = Daemon.write(tmp_path, redis_server.url, pool_size=1,
                          flush_interval_ms=300, max_flush_interval_ms=1000).start()
    try:
        Producers.ring(rings_dir, n, count, pace=(1, 0.01)).start().join()
        client = redis_server.client()
        wait_until(lambda: stream_record_count(client) >= count, 30, "every record")
        acc = account(tally_stream(client), producer_ids(n, count))
        sizes = _entry_sizes(client)
        print(f"trickle: {acc} batches={sizes}")
        assert acc.ok
        assert len(sizes) <= count // 5, f"records were not batched: {sizes}"
    finally:
        daemon.stop()


def test_a_ring_smaller_than_a_batch_is_sent_when_half_full(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    """A 256 KiB ring cannot hold a batch of 5,000 records: the flusher sends
    whenever the ring is half full instead of waiting 60 s for the interval,
    so a producer that waits for room finishes at once and nothing is lost."""
    n, count = 1, 20_000
    daemon = Daemon.write(tmp_path, redis_server.url, pool_size=1, batch_size=5_000,
                          flush_interval_ms=60_000, max_flush_interval_ms=60_000).start()
    try:
        Producers.ring(rings_dir, n, count, capacity=1 << 18).start().join(30)
        client = redis_server.client()
        wait_until(lambda: stream_record_count(client) >= count, 30,
                   "every record, well within the 60 s flush interval")
        acc = account(tally_stream(client), producer_ids(n, count))
        sizes = _entry_sizes(client)
        print(f"small ring: {acc} batches={len(sizes)} largest={max(sizes)}")
        assert acc.ok
        assert max(sizes) < 5_000  # sent by the half-full rule, not by batch_size
    finally:
        daemon.stop()
