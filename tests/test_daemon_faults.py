"""collector-daemon under faults: killed flushers, a killed daemon, Redis down, dead producers.

Every test counts records by (producer, seq) in Redis and reports lost and
duplicated ones. Duplicates are allowed only for batches in flight when a
process was killed (at most one batch per flusher killed); they carry the
same record ids, so sinks drop them.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from pathlib import Path

import msgpack
import psutil

from collector.common.stream import decode_entry
from collector.testing import (
    Daemon,
    Producers,
    RedisServer,
    account,
    producer_ids,
    record_key,
    stream_record_count,
    tally_stream,
    wait_until,
)

BATCH = 1000


def test_kill_9_of_a_flusher_mid_load(tmp_path: Path, rings_dir: Path,
                                      redis_server: RedisServer) -> None:
    n, count = 4, 30_000
    client = redis_server.client()
    daemon = Daemon.write(tmp_path, redis_server.url, batch_size=BATCH).start()
    try:
        procs = Producers.ring(rings_dir, n, count, pace=(200, 0.01)).start()
        wait_until(lambda: stream_record_count(client) > 10_000, 60, "the load to be flowing")
        victim = daemon.flusher_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: daemon.metrics()["collector_daemon_flusher_restarts_total"] == 1,
                   30, "the flusher to be restarted")
        assert victim not in daemon.flusher_pids()
        procs.join()
        wait_until(lambda: not list(rings_dir.glob("*.ring")), 60,
                   "every ring drained and removed")
        seen = tally_stream(client)
        acc = account(seen, producer_ids(n, count))
        print(f"kill -9 flusher: {acc} (batch in flight <= {BATCH})")
        assert acc.lost == 0 and acc.unexpected == 0
        assert acc.duplicated <= BATCH
        assert "A flusher died; restarting it." in daemon.log_text()
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_kill_9_of_the_whole_daemon_then_restart(tmp_path: Path, rings_dir: Path,
                                                 redis_server: RedisServer) -> None:
    n, count = 4, 30_000
    client = redis_server.client()
    daemon = Daemon.write(tmp_path, redis_server.url, batch_size=BATCH).start()
    cfg = daemon.config
    try:
        procs = Producers.ring(rings_dir, n, count, pace=(200, 0.01)).start()
        wait_until(lambda: stream_record_count(client) > 10_000, 60, "the load to be flowing")
        daemon.kill_all()  # kill -9 of the supervisor and every flusher
        at_kill = stream_record_count(client)
        daemon = Daemon(cfg, log=tmp_path / "daemon2.log").start()
        procs.join()
        wait_until(lambda: not list(rings_dir.glob("*.ring")), 60,
                   "every ring drained and removed")
        seen = tally_stream(client)
        acc = account(seen, producer_ids(n, count))
        print(f"kill -9 daemon: in Redis at kill={at_kill} {acc} "
              f"(batches in flight <= 2 x {BATCH})")
        assert acc.lost == 0 and acc.unexpected == 0
        assert acc.duplicated <= 2 * BATCH  # one batch in flight per flusher
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_supervisor_killed_alone_flushers_exit_and_restart_resumes(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    """kill -9 of the supervisor only: its orphaned flushers exit by themselves."""
    client = redis_server.client()
    daemon = Daemon.write(tmp_path, redis_server.url, batch_size=BATCH).start()
    cfg = daemon.config
    try:
        procs = Producers.ring(rings_dir, 2, 20_000, pace=(200, 0.01)).start()
        wait_until(lambda: stream_record_count(client) > 5_000, 60, "the load to be flowing")
        flushers = daemon.flusher_pids()
        assert daemon.proc is not None
        daemon.proc.kill()
        daemon.wait()
        psutil.wait_procs([psutil.Process(p) for p in flushers if psutil.pid_exists(p)],
                          timeout=10)
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                       for p in flushers)
        daemon = Daemon(cfg, log=tmp_path / "daemon2.log").start()
        procs.join()
        wait_until(lambda: not list(rings_dir.glob("*.ring")), 60,
                   "every ring drained and removed")
        acc = account(tally_stream(client), producer_ids(2, 20_000))
        print(f"kill -9 supervisor: {acc}")
        assert acc.lost == 0 and acc.unexpected == 0 and acc.duplicated <= 2 * BATCH
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_redis_killed_and_restarted_mid_load(tmp_path: Path, rings_dir: Path,
                                             redis_server: RedisServer) -> None:
    n, count = 3, 30_000
    client = redis_server.client()
    daemon = Daemon.write(tmp_path, redis_server.url, batch_size=BATCH,
                          redis_timeout_s=1).start()
    try:
        procs = Producers.ring(rings_dir, n, count, pace=(200, 0.01)).start()
        wait_until(lambda: stream_record_count(client) > 5_000, 60, "the load to be flowing")
        redis_server.kill()  # SIGKILL; acknowledged writes are in the append-only file
        def not_ready() -> dict | None:
            code, detail = daemon.readyz()
            return detail if code == 503 else None
        detail = wait_until(not_ready, 30, "/readyz to turn 503")
        assert detail["redis"]["reachable"] is False
        wait_until(lambda: daemon.metrics()["collector_daemon_redis_errors_total"] > 0, 30,
                   "flushers to see Redis down")
        redis_server.start()
        wait_until(daemon.ready, 30, "/readyz to turn 200 again")
        procs.join()
        wait_until(lambda: not list(rings_dir.glob("*.ring")), 60, "the backlog to drain")
        seen = tally_stream(redis_server.client())
        acc = account(seen, producer_ids(n, count))
        print(f"redis killed and restarted: {acc}")
        assert acc.lost == 0 and acc.unexpected == 0
        assert acc.duplicated <= 2 * BATCH  # a batch Redis took just before it was killed, resent
        # The hot error path is rate-limited: far fewer lines than errors.
        log = daemon.log_text()
        errors = daemon.metrics()["collector_daemon_redis_errors_total"]
        lines = log.count("Redis round trip failed")
        assert 1 <= lines <= 2 * 2 + 2 and lines <= errors
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_producer_killed_by_kill_9(tmp_path: Path, rings_dir: Path,
                                   redis_server: RedisServer) -> None:
    """What a killed producer published still arrives; its ring is removed after draining."""
    client = redis_server.client()
    daemon = Daemon.write(tmp_path, redis_server.url).start()
    try:
        (proc,) = Producers.ring(rings_dir, 1, 10_000_000, pace=(100, 0.005)).start().procs
        wait_until(lambda: stream_record_count(client) > 3_000, 60, "records to flow")
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        wait_until(lambda: not list(rings_dir.glob("*.ring")), 30,
                   "the dead producer's ring removed")
        # The supervisor logs the removal right after the unlink: wait for the line.
        pattern = rf'Removed the drained ring.*producer_pid={proc.pid} records=(\d+)'
        m = wait_until(lambda: re.search(pattern, daemon.log_text()), 30,
                       "the removal to be logged")
        published = int(m.group(1))
        seen = tally_stream(client)
        acc = account(seen, producer_ids(1, published))
        print(f"producer kill -9: published={published} {acc}")
        assert acc.ok
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_backpressure_keeps_data_in_rings_and_never_trims(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    n, count, budget, batch, pool = 2, 5_000, 5, 100, 2
    client = redis_server.client()
    daemon = Daemon.write(tmp_path, redis_server.url, pool_size=pool,
                          batch_size=batch, max_backlog_entries=budget).start()
    try:
        Producers.ring(rings_dir, n, count).start().join()
        wait_until(lambda: daemon.metrics()["collector_daemon_backpressure_total"] > 3, 30,
                   "the daemon to push back")
        length = client.xlen("collector:analytics")
        first = client.xrange("collector:analytics", count=1)[0][0]
        assert budget <= length <= budget + pool, f"stream grew to {length} (budget {budget})"
        m = daemon.metrics()
        pending = sum(v for k, v in m.items() if k.startswith("collector_daemon_ring_pending"))
        assert pending > 0  # the rest waits in the rings
        # Still over budget a while later: nothing more written, nothing trimmed.
        wait_until(lambda: daemon.metrics()["collector_daemon_backpressure_total"] > 10, 30,
                   "more pushback")
        assert client.xlen("collector:analytics") == length
        assert client.xrange("collector:analytics", count=1)[0][0] == first
        # A consumer (like the pump) deletes what it has processed: the rest flows.
        seen: Counter[tuple[int, int]] = Counter()

        def consume() -> bool:
            entries = client.xrange("collector:analytics")
            for eid, fields in entries:
                for raw in decode_entry(fields).records:
                    seen[record_key(msgpack.unpackb(raw))] += 1
                client.xdel("collector:analytics", eid)
            assert client.xlen("collector:analytics") <= budget + pool
            return sum(seen.values()) >= n * count and not list(rings_dir.glob("*.ring"))
        wait_until(consume, 60, "every record through the budget", interval=0.05)
        acc = account(seen, producer_ids(n, count))
        print(f"backpressure: {acc}")
        assert acc.ok
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_byte_budget_keeps_data_in_rings_and_counts_it(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    """max_backlog_bytes 256 KiB with ~45 KB entries: the stream's bytes as Redis
    reports them (MEMORY USAGE, every node) stay within the budget plus a batch per
    flusher, the daemon exports them and counts the pushback, and every record comes
    through once a consumer deletes what it has read."""
    n, count, budget, batch, pool = 2, 4_000, 256 << 10, 100, 2
    client = redis_server.client()
    daemon = Daemon.write(tmp_path, redis_server.url, pool_size=pool, batch_size=batch,
                          max_backlog_bytes=budget).start()
    key = "collector:analytics"
    try:
        Producers.ring(rings_dir, n, count).start()
        wait_until(lambda: daemon.metrics()["collector_daemon_backpressure_total"] > 3, 30,
                   "the daemon to push back")
        entry = max(len(f[b"recs"]) for _, f in client.xrange(key))
        limit = budget + (pool + 1) * (entry + 1024)  # the entry that crosses, one per flusher
        used = int(client.memory_usage(key, samples=0))
        assert budget * 0.7 <= used <= limit, f"{used} bytes in the stream (budget {budget})"
        exported = daemon.metrics()[f'collector_daemon_stream_backlog_bytes{{shard="{key}"}}']
        assert exported > budget * 0.7
        seen: Counter[tuple[int, int]] = Counter()
        longest = used

        def consume() -> bool:
            nonlocal longest
            for eid, fields in client.xrange(key):
                for raw in decode_entry(fields).records:
                    seen[record_key(msgpack.unpackb(raw))] += 1
                client.xdel(key, eid)
            longest = max(longest, int(client.memory_usage(key, samples=0) or 0))
            return sum(seen.values()) >= n * count and not list(rings_dir.glob("*.ring"))
        wait_until(consume, 60, "every record through the budget", interval=0.05)
        acc = account(seen, producer_ids(n, count))
        print(f"byte budget: {acc}; largest stream {longest} bytes (budget {budget}, "
              f"entry {entry})")
        assert acc.ok and longest <= limit
        assert "max_backlog_entries is deprecated" not in daemon.log_text()
        assert daemon.stop() == 0
    finally:
        daemon.close()
