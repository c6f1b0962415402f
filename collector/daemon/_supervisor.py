"""The daemon's supervisor process.

It locks the rings directory (:mod:`._startup`), waits for Redis, then
scans the directory every ``scan_interval_ms``: :mod:`._triage` sorts the
ring files it finds (served, refused, quarantined, removed once drained) and
gives each valid ring to exactly one flusher of the pool (:mod:`._pool`,
``pool_size`` processes). A flusher that dies is restarted with the same
rings, which resume from their committed head.

It also runs the embedded ``redis-server`` when ``redis_url`` is not set,
serves ``/healthz``, ``/readyz`` and ``/metrics`` (:mod:`._metrics`), and
handles signals: SIGTERM/SIGINT drain every ring within
``shutdown_timeout_s`` and exit 0; a second one exits at once (exit code 1)
leaving what is left in the rings for the next start; SIGHUP is logged and
ignored (a restart applies a new config: restarting loses nothing).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import redis

import ringbuf
from collector.common import redisconn
from collector.common.health import HealthServer
from collector.common.log import get_logger
from collector.common.log import setup as setup_logging
from collector.config import CollectorConfig

from ._budget import BudgetPublisher
from ._embedded import EmbeddedRedis, EmbeddedRedisError
from ._metrics import health_server
from ._pool import FlusherPool
from ._startup import DaemonError, lock_rings_dir
from ._triage import RingTriage

_log = get_logger(__name__)

__all__ = ["DaemonError", "Supervisor", "run"]

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_CONFIG = 2
EXIT_REDIS = 3


class Supervisor:
    def __init__(self, cfg: CollectorConfig) -> None:
        self.cfg = cfg
        self.rings_dir = Path(cfg.rings_dir)
        self.pool = FlusherPool(cfg, stopping=lambda: self.stopping)
        self.triage = RingTriage(self.rings_dir, self.pool)
        self.keys = cfg.shard_keys()
        self.embedded: EmbeddedRedis | None = None
        self.http: HealthServer | None = None
        self.client: redis.Redis | None = None
        self.budget: BudgetPublisher | None = None
        self.stopping = False
        self.signals = 0
        self._lock_fd = -1
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    # -- signals ----------------------------------------------------------------------
    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_hup(self, signum: int, frame: Any) -> None:
        _log.warning("SIGHUP ignored: configuration is read at start only; restart the "
                     "daemon to apply a new config (records stay in the rings meanwhile).")

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            self.stopping = True
            _log.info("Stopping: draining every ring into Redis.", signal=name,
                      shutdown_timeout_s=self.cfg.shutdown_timeout_s)
            return
        _log.warning("Second stop signal: exiting at once; records left in the rings are "
                     "sent by the next start.", signal=name)
        self._exit_now()

    def _exit_now(self) -> None:
        self.pool.kill_now()
        if self.embedded is not None and self.embedded.proc is not None:
            try:
                self.embedded.proc.terminate()  # flushes its append-only file
            except OSError:
                pass
        os._exit(EXIT_FORCED)

    # -- views for HTTP -------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        redis_ok = False
        error = None
        try:
            assert self.client is not None
            redis_ok = bool(self.client.ping())
        except (redis.RedisError, OSError, AssertionError) as exc:
            error = str(exc)
        now = time.monotonic()
        # A flusher's loop blocks at most one Redis timeout per command it sends.
        stale_after = 2 * self.cfg.redis_timeout_s + 5.0
        flushers = []
        for s in self.pool.slots:
            heartbeat = s.counters.get("heartbeat")
            age = now - heartbeat if heartbeat else None
            flushers.append({
                "slot": s.index,
                "pid": s.proc.pid if s.proc is not None else None,
                "alive": s.up,
                "stalled": age is not None and age > stale_after,
                "redis_ok": bool(s.counters.get("redis_ok")),
                "rings": len(s.rings),
                "heartbeat_age_s": round(age, 3) if age is not None else None,
            })
        ready = (redis_ok and not self.stopping
                 and all(f["alive"] and f["redis_ok"] and not f["stalled"] for f in flushers))
        detail: dict[str, Any] = {
            "status": "ready" if ready else ("stopping" if self.stopping else "not ready"),
            "redis": {"url": self.cfg.redacted_redis_url(), "reachable": redis_ok},
            "flushers": flushers,
            "rings": len(self.triage.snapshot),
            "rings_refused": len(self.triage.refused),
        }
        if error:
            detail["redis"]["error"] = error
        if self.embedded is not None:
            detail["redis"]["embedded"] = True
            detail["redis"]["embedded_alive"] = self.embedded.alive()
        return ready, detail

    def backlog(self) -> dict[str, tuple[int, int | None]]:
        """Each shard's (XLEN, MEMORY USAGE or None when Redis does not say)."""
        try:
            assert self.client is not None
            pipe = self.client.pipeline(transaction=False)
            for k in self.keys:
                pipe.xlen(k)
                pipe.memory_usage(k)
            got = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError, AssertionError):
            return {}
        out: dict[str, tuple[int, int | None]] = {}
        for i, k in enumerate(self.keys):
            length, usage = got[2 * i], got[2 * i + 1]
            if isinstance(length, Exception):
                continue
            out[k] = (int(length), None if isinstance(usage, Exception) else int(usage or 0))
        return out

    # -- main ------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.cfg
        self._install_signals()
        try:
            self._lock_fd = lock_rings_dir(self.rings_dir)
            if cfg.embedded_redis:
                self.embedded = EmbeddedRedis(cfg.redis_server, cfg.runtime_dir,
                                              maxmemory=2 * cfg.max_backlog_bytes)
                self.embedded.start(wait_s=max(cfg.startup_redis_wait_s, 5.0))
            self.client = redisconn.connect_from_config(
                cfg, timeout_s=min(1.0, cfg.redis_timeout_s))
            host, port = cfg.health_host_port
            try:
                self.http = health_server(host, port, self)
            except OSError as exc:
                raise DaemonError(f"health_address={cfg.health_address!r}: cannot listen: "
                                  f"{exc.strerror}") from None
            self.http.start()
            _log.info("Serving health and metrics.", address="{}:{}".format(*self.http.address))
            if not redisconn.wait_for_redis(self.client, cfg, lambda: self.stopping):
                self._cleanup()
                return EXIT_OK if self.stopping else EXIT_REDIS
            if not cfg.enabled:
                _log.info("Reporting is disabled (enabled: false); the daemon still drains "
                          "the rings it finds.")
            self.budget = BudgetPublisher(self.client, cfg.stream_key, str(self.rings_dir),
                                          cfg.max_backlog_bytes, cfg.stream_shards)
            self.budget.tick(time.monotonic())
            self.scan()  # assign what is already there before the flushers start
            self.pool.start_all()
            _log.info("collector-daemon is running.", rings_dir=str(self.rings_dir),
                      pool_size=cfg.pool_size, redis=cfg.redacted_redis_url(),
                      shards=len(self.keys), rings=len(self.triage.served),
                      ring_path=ringbuf.ring_path())
            self._loop()
            return self._shutdown()
        except (DaemonError, EmbeddedRedisError) as exc:
            _log.error(str(exc))
            self._cleanup()
            return EXIT_CONFIG

    def scan(self) -> None:
        self.triage.scan(adopt=not self.stopping)

    def _loop(self) -> None:
        scan_s = self.cfg.scan_interval_ms / 1000.0
        next_scan = time.monotonic() + scan_s
        while not self.stopping:
            now = time.monotonic()
            if now >= next_scan:
                self.scan()
                next_scan = now + scan_s
            if self.embedded is not None:
                self.embedded.restart_if_dead()
            self.pool.restart_due(now)
            if self.budget is not None:
                self.budget.tick(now)
            self._wait_events(max(0.0, next_scan - time.monotonic()))

    def _wait_events(self, timeout: float) -> None:
        """Wait for a flusher's report or death, or a signal (its wake-up byte)."""
        for obj in self.pool.wait(timeout, self.triage.on_bad, self.triage.on_flusher_death,
                                  extra=[self._wake_r]):
            try:
                while obj.recv(64):
                    pass
            except (BlockingIOError, OSError):
                pass

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.cfg.shutdown_timeout_s
        self.pool.send_stop(deadline)
        while self.pool.running():
            left = deadline + 2.0 - time.monotonic()
            if left <= 0:
                self.pool.kill_late()
                break
            self._wait_events(min(left, 0.5))
        self.scan()  # remove the rings of finished producers that are now drained
        if self.budget is not None:
            self.budget.withdraw()
        snapshot = self.triage.snapshot
        pending = sum(s.pending for s in snapshot)
        self._cleanup()
        _log.info("collector-daemon stopped.", records_left_in_rings=pending,
                  rings=len(snapshot))
        return EXIT_OK

    def _cleanup(self) -> None:
        self.pool.close()
        self.triage.close()
        if self.embedded is not None:
            self.embedded.stop()
        if self.http is not None:
            self.http.stop()
        if self.client is not None:
            self.client.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def run(cfg: CollectorConfig) -> int:
    """Run the daemon until it is stopped; return the process exit code."""
    setup_logging(cfg.log_format, cfg.log_level, proc="supervisor")
    return Supervisor(cfg).run()
