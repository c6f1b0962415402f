"""End to end: producers -> collector-daemon -> Redis stream -> collector-pump -> sinks.

Every part is real and runs as its own process: a ``redis-server`` (the
``redis_server`` fixture, given to daemon and pump as ``redis_url``),
``collector-daemon --config``, ``collector-pump --config`` (supervisor plus
spawned workers), producer processes recording through
``collector.Analytics`` configured by the daemon's YAML (``full_policy:
block``, so nothing is dropped by policy; drops are counted and must be 0),
and the sinks' targets: a JSON Lines file, the machine's PostgreSQL (a table
per test, dropped at the end) and, for the outage test, a local HTTP server.

Each record carries ``producer`` and ``seq`` (tests/_daemon_helpers.make_record);
each test counts the records in every sink by ``(producer, seq)``, checks
their contents, and prints and asserts lost and duplicated ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from pump._redis import group_lag

from . import _daemon_helpers as H
from ._support import RedisServer, free_port, pg_dsn, wait_until
from .pump_plugins import http_get, start_pump, write_config

psycopg = pytest.importorskip("psycopg")

KEY = "collector:analytics"
Seen = Counter[tuple[int, int]]
PACE = (25, 0.02)  # at most ~1,250 records/s per producer: 10,000 records take ~8 s


# ----------------------------------------------------------------- processes


class PumpProc:
    """``collector-pump --config`` in its own session (its process group is its pid)."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        config = {**config, "health_address": f"127.0.0.1:{self.port}"}
        self.config = write_config(tmp / "pump.yaml", **config)
        self.log = tmp / "pump.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PumpProc:
        self.proc = start_pump(self.config, self.log)
        wait_until(self.healthy, 60, "the pump's /healthz")
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"collector-pump exited with {self.proc.returncode}:\n"
                                 + self.log.read_text(errors="replace")[-3000:])
        try:
            return http_get(f"http://127.0.0.1:{self.port}/healthz", 2)[0] == 200
        except OSError:
            return False

    def readyz(self) -> dict[str, Any]:
        return json.loads(http_get(f"http://127.0.0.1:{self.port}/readyz", 5)[1])

    def workers(self, sink: str) -> list[psutil.Process]:
        """The sink's worker processes: children of the pump the supervisor names for it."""
        assert self.proc is not None
        pids = set(self.readyz()["sinks"][sink]["pids"])
        return [c for c in psutil.Process(self.proc.pid).children() if c.pid in pids]

    def kill_all(self) -> None:
        """kill -9 of the supervisor and every child (the whole pump)."""
        if self.proc is None:
            return
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for k in kids:  # also any child that left the process group
            try:
                k.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(10)
        psutil.wait_procs(kids, timeout=10)

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self.kill_all()


class HttpTarget:
    """A local HTTP server for the ``http`` sink that counts (producer, seq) it accepted.

    ``down`` makes it answer every POST and the health GET with 503 and a
    ``Retry-After: 1``, as an overloaded service would.
    """

    def __init__(self) -> None:
        self.down = threading.Event()
        self.seen: Seen = Counter()
        self.refused = 0
        self.lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(503 if target.down.is_set() else 200, b"{}")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if target.down.is_set():
                    with target.lock:
                        target.refused += 1
                    return self._answer(503, b"down", {"Retry-After": "1"})
                items = json.loads(body)
                with target.lock:
                    for item in items:
                        rec = item["record"]
                        target.seen[(rec["producer"], rec["seq"])] += 1
                self._answer(200, b'{"ok": true}')

            def _answer(self, status: int, body: bytes, extra: dict[str, str] | None = None
                        ) -> None:
                try:
                    self.send_response(status)
                    for k, v in (extra or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def total(self) -> int:
        with self.lock:
            return sum(self.seen.values())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def produce_paced(config: str, producer: int, count: int, dropped: Any,
                  pace_every: int, pace_s: float) -> None:
    """:func:`H.produce_with_analytics`, pausing ``pace_s`` every ``pace_every`` records.

    The pause only stretches the load over a few seconds so that faults land
    while producers are still sending; no test waits on it.
    """
    from collector import Analytics

    analytics = Analytics.from_config(config, environ={}).start()
    pause = threading.Event()
    drops = 0
    for seq in range(count):
        if not analytics.record_hit(H.make_record(producer, seq)):
            drops += 1
        if seq % pace_every == pace_every - 1:
            pause.wait(pace_s)
    dropped.value = drops
    analytics.stop()


class Producers:
    """Producer processes recording through ``collector.Analytics`` (block policy).

    ``pace=(every, seconds)`` spreads the load out (see :func:`produce_paced`).
    """

    def __init__(self, collector_yaml: Path, n: int, count: int,
                 pace: tuple[int, float] | None = None) -> None:
        self.n, self.count = n, count
        self.drops = [H.CTX.Value("q", -1) for _ in range(n)]

        def args(p: int) -> tuple[Any, ...]:
            base = (str(collector_yaml), p, count, self.drops[p])
            return base if pace is None else (*base, *pace)

        target = H.produce_with_analytics if pace is None else produce_paced
        self.procs = [H.CTX.Process(target=target, args=args(p), daemon=True)
                      for p in range(n)]

    def start(self) -> Producers:
        for p in self.procs:
            p.start()
        return self

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.is_alive())

    def join(self, timeout: float = 180.0) -> int:
        """Wait for every producer; the records they dropped (must be 0)."""
        H.join_all(self.procs, timeout)
        return sum(d.value for d in self.drops)

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(10)


class Stack:
    """Daemon, pump, producers and sink targets of one test; ``close()`` ends them all."""

    def __init__(self, tmp: Path, redis_server: RedisServer) -> None:
        self.tmp = tmp
        self.redis = redis_server
        self.r = redis_server.client()
        self.rings = tmp / "rings"
        self.rings.mkdir(mode=0o700)
        self.collector_yaml = H.base_config(
            tmp, redis_server.url, self.rings, full_policy="block", block_timeout_ms=60_000,
            ring_capacity_bytes=8 << 20)
        self.daemon = H.Daemon(self.collector_yaml, tmp / "daemon.log")
        self.pump: PumpProc | None = None
        self.producers: Producers | None = None
        self.http: HttpTarget | None = None
        self.table = f"e2e_{os.getpid()}_{free_port()}"
        self.file = tmp / "out" / "analytics.jsonl"
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self.table}")

    def pump_config(self, sinks: dict[str, Any], **extra: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "redis_url": self.redis.url, "read_block_s": 0.1, "read_count": 10,
            "retry_initial_ms": 20, "retry_max_ms": 300, "batch_deadline_s": 20,
            "claim_idle_ms": 30_000, "shutdown_timeout_s": 10, "trim_interval_s": 1,
            "pumps": sinks,
        }
        cfg.update(extra)
        return cfg

    def file_sink(self) -> dict[str, Any]:
        return {"type": "file", "workers": 1,
                "meta": {"path": str(self.file), "format": "jsonl", "fsync": "batch"}}

    def pg_sink(self, workers: int = 2) -> dict[str, Any]:
        return {"type": "postgres", "workers": workers,
                "meta": {"dsn": pg_dsn(), "table": self.table}}

    # -- counting ------------------------------------------------------------
    def file_lines(self) -> int:
        if not self.file.exists():
            return 0
        with open(self.file, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))

    def file_seen(self) -> Seen:
        """(producer, seq) -> copies in the file; every line must be a whole, right record."""
        seen: Seen = Counter()
        for line in self.file.read_bytes().splitlines():
            rec = json.loads(line)
            rec_id = rec.pop("_id")
            p, s = rec["producer"], rec["seq"]
            assert rec == H.make_record(p, s), f"file record {rec_id} is {rec}"
            seen[(p, s)] += 1
        return seen

    def pg_rows(self) -> int:
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()
            if row is None or row[0] is None:
                return 0
            got = conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()
            return int(got[0]) if got else 0

    def pg_seen(self) -> Seen:
        seen: Seen = Counter()
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            for rec_id, rec in conn.execute(f"SELECT id, record FROM {self.table}"):
                p, s = rec["producer"], rec["seq"]
                assert rec == H.make_record(p, s), f"postgres record {rec_id} is {rec}"
                seen[(p, s)] += 1
        return seen

    def group(self, name: str) -> tuple[int, int]:
        """(lag, pending) of a sink's consumer group, from XINFO GROUPS."""
        if not any(g["name"].decode() == name for g in self.r.xinfo_groups(KEY)):
            return -1, -1
        return group_lag(self.r, KEY, name)  # counts itself when Redis reports no lag

    def all_acknowledged(self, *groups: str) -> bool:
        return all(self.group(g) == (0, 0) for g in groups)

    def dead_letters(self, sink: str) -> int:
        return int(self.r.xlen(f"{KEY}:dead:{sink}"))

    # -- teardown ---------------------------------------------------------------
    def close(self) -> None:
        errors: list[BaseException] = []
        for step in (lambda: self.producers and self.producers.kill(),
                     lambda: self.pump and self.pump.kill_all(),
                     self.daemon.close,
                     lambda: self.http and self.http.close()):
            try:
                step()
            except BaseException as exc:  # keep tearing down
                errors.append(exc)
        with psycopg.connect(pg_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        if errors:
            raise errors[0]


@pytest.fixture
def stack(tmp_path: Path, redis_server: RedisServer) -> Iterator[Stack]:
    try:
        with psycopg.connect(pg_dsn(), connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {pg_dsn()!r} is not reachable: {exc}")
    s = Stack(tmp_path, redis_server)
    try:
        yield s
    finally:
        s.close()


def report(test: str, sink: str, seen: Seen, producers: int, count: int) -> tuple[int, int]:
    lost, dup, unexpected = H.lost_and_duplicated(seen, producers, count)
    print(f"{test}: {sink}: expected={producers * count} distinct={len(seen)} "
          f"lost={lost} duplicated={dup} unexpected={unexpected}")
    assert unexpected == 0, f"{sink}: {unexpected} records that no producer sent"
    return lost, dup


# ----------------------------------------------------------------- tests


def test_four_producers_exactly_once_into_file_and_postgres(stack: Stack) -> None:
    """4 x 50,000 records through daemon and pump: each once in the file and in PostgreSQL."""
    n, count = 4, 50_000
    total = n * count
    stack.daemon.start()
    stack.pump = PumpProc(stack.tmp, stack.pump_config(
        {"file": stack.file_sink(), "postgres": stack.pg_sink()})).start()
    stack.producers = Producers(stack.collector_yaml, n, count).start()
    assert stack.producers.join() == 0, "a producer dropped records (block policy)"
    wait_until(lambda: stack.file_lines() >= total and stack.pg_rows() >= total, 150,
               "every record in the file and in PostgreSQL", interval=0.5)
    wait_until(lambda: stack.all_acknowledged("file", "postgres"), 30,
               "both groups acknowledged everything", interval=0.2)
    assert stack.pump.stop() == 0
    assert stack.daemon.stop() == 0
    assert report("exactly-once", "file", stack.file_seen(), n, count) == (0, 0)
    assert report("exactly-once", "postgres", stack.pg_seen(), n, count) == (0, 0)
    assert stack.dead_letters("file") == stack.dead_letters("postgres") == 0


def test_kill_9_of_a_worker_and_of_the_whole_pump_loses_nothing(stack: Stack) -> None:
    """kill -9 of one postgres worker mid-load, then of the whole pump, then a restart.

    PostgreSQL deduplicates redeliveries by record id (0 duplicates); the
    file sink cannot, so its duplicates are counted and printed, not failed.
    """
    n, count = 4, 10_000
    total = n * count
    stack.daemon.start()
    pump = stack.pump = PumpProc(stack.tmp, stack.pump_config(
        {"file": stack.file_sink(), "postgres": stack.pg_sink(workers=2)}, read_count=2)).start()
    wait_until(lambda: len(pump.workers("postgres")) == 2, 30, "two postgres workers")
    stack.producers = Producers(stack.collector_yaml, n, count, pace=PACE).start()

    wait_until(lambda: stack.pg_rows() > 0, 60, "the first rows in PostgreSQL", interval=0.05)
    victim = pump.workers("postgres")[0]
    victim.kill()
    rows_at_kill = stack.pg_rows()
    print(f"kill-9: killed postgres worker {victim.pid} at {rows_at_kill} rows, "
          f"{stack.file_lines()} file lines, producers alive={stack.producers.alive()}")
    wait_until(lambda: (len(ws := pump.workers("postgres")) == 2
                        and victim.pid not in [w.pid for w in ws]), 60,
               "the supervisor to restart the killed worker", interval=0.1)

    wait_until(lambda: stack.pg_rows() > rows_at_kill, 60, "rows after the worker restart",
               interval=0.05)
    print(f"kill-9: killed the whole pump at {stack.pg_rows()} rows, "
          f"{stack.file_lines()} file lines, producers alive={stack.producers.alive()}")
    pump.kill_all()
    pump.start()

    assert stack.producers.join() == 0, "a producer dropped records (block policy)"
    wait_until(lambda: stack.pg_rows() >= total and stack.file_lines() >= total, 120,
               "every record in PostgreSQL and in the file", interval=0.3)
    wait_until(lambda: stack.all_acknowledged("file", "postgres"), 30,
               "both groups acknowledged everything", interval=0.2)
    assert pump.stop() == 0
    pg_lost, pg_dup = report("kill-9", "postgres", stack.pg_seen(), n, count)
    file_lost, _file_dup = report("kill-9", "file", stack.file_seen(), n, count)
    assert (pg_lost, pg_dup, file_lost) == (0, 0, 0)
    assert stack.dead_letters("file") == stack.dead_letters("postgres") == 0


def test_sink_down_does_not_hold_back_the_other_and_drains_after(stack: Stack) -> None:
    """An http sink answering 503 for a while: the file sink keeps flowing, 0 lost in both.

    While the http target is down, the file group catches up with everything
    the producers sent (lag and pending 0, i.e. no growth) while the http
    group holds a backlog; once the target is back, the backlog drains.
    """
    n, count = 4, 10_000
    total = n * count
    http = stack.http = HttpTarget()
    stack.daemon.start()
    sinks = {"file": stack.file_sink(),
             "http": {"type": "http", "workers": 1, "timeout_s": 2,
                      "meta": {"url": f"{http.base}/ingest", "health_url": f"{http.base}/health",
                               "max_request_s": 2}}}
    # max_deliveries high: the outage must hold batches, never dead-letter them
    stack.pump = PumpProc(stack.tmp, stack.pump_config(
        sinks, batch_deadline_s=3, max_deliveries=50, read_count=2)).start()
    stack.producers = Producers(stack.collector_yaml, n, count, pace=PACE).start()

    wait_until(lambda: http.total() > 0, 60, "the first records at the http target",
               interval=0.05)
    http.down.set()
    before = http.total()
    print(f"outage: http target down after {before} records")
    wait_until(lambda: stack.pump.readyz()["sinks"]["http"]["workers_in_outage"] >= 1, 60,
               "the http worker to see the outage", interval=0.1)

    # During the outage the file sink takes everything the producers send.
    max_file_backlog = 0

    def file_caught_up() -> bool:
        nonlocal max_file_backlog
        lag, pending = stack.group("file")
        max_file_backlog = max(max_file_backlog, lag + pending)
        return stack.producers.alive() == 0 and stack.file_lines() >= total \
            and (lag, pending) == (0, 0)

    wait_until(file_caught_up, 120, "the file sink to take every record during the outage",
               interval=0.1)
    http_lag, http_pending = stack.group("http")
    print(f"outage: file group lag=0 pending=0 (largest backlog seen {max_file_backlog} "
          f"entries); http group lag={http_lag} pending={http_pending}, "
          f"posts refused={http.refused}, http has {http.total()} records")
    assert http.down.is_set() and http_lag + http_pending > 0
    assert http.total() == before, "the target accepted records while down"

    http.down.clear()
    wait_until(lambda: http.total() >= total, 120, "the http backlog to drain", interval=0.2)
    wait_until(lambda: stack.all_acknowledged("file", "http"), 30,
               "both groups acknowledged everything", interval=0.2)
    assert stack.producers.join() == 0, "a producer dropped records (block policy)"
    assert stack.pump.stop() == 0
    file_lost, file_dup = report("sink-down", "file", stack.file_seen(), n, count)
    http_lost, _http_dup = report("sink-down", "http", Counter(http.seen), n, count)
    assert (file_lost, file_dup, http_lost) == (0, 0, 0)
    assert stack.dead_letters("file") == stack.dead_letters("http") == 0
