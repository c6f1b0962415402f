"""The daemon's supervisor process.

It owns the rings directory (created 0700; a lock file ``.collector-daemon.lock``
keeps a second daemon away), scans it every ``scan_interval_ms``, and gives
each valid ring to exactly one flusher of a pool of ``pool_size`` processes
(the least loaded one when the ring appears; the assignment then stays).
Rings that cannot be trusted are handled before any flusher sees them:

* owned by another user, or writable by group/others: refused and reported
  (left in place; retried if their owner or mode changes);
* not a ring, a ring of another layout version, or corrupted (also when a
  flusher finds a bad frame later): moved to ``quarantine/`` and reported.

A flusher that dies is restarted with the same rings, which resume from
their committed head. A ring whose producer is dead (pid + start time) or
closed is removed once everything in it was committed to Redis.

It also runs the embedded ``redis-server`` when ``redis_url`` is not set,
serves ``/healthz``, ``/readyz`` and ``/metrics``, and handles signals:
SIGTERM/SIGINT drain every ring within ``shutdown_timeout_s`` and exit 0; a
second one exits at once (exit code 1) leaving what is left in the rings for
the next start; SIGHUP is logged and ignored (a restart applies a new
config: restarting loses nothing).
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import signal
import socket
import stat
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import redis

import ringbuf
from collector.common import redisconn
from collector.common.health import HealthServer
from collector.common.log import RateLimited, get_logger
from collector.common.log import setup as setup_logging
from collector.common.stream import shard_keys
from collector.config import CollectorConfig

from ._embedded import EmbeddedRedis, EmbeddedRedisError
from ._flusher import flusher_main
from ._metrics import FLUSHER_COUNTERS, health_server

_log = get_logger(__name__)

LOCK_NAME = ".collector-daemon.lock"
QUARANTINE = "quarantine"

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_CONFIG = 2
EXIT_REDIS = 3


class DaemonError(RuntimeError):
    """The daemon cannot start; the message says why and what to change."""


class _Slot:
    """One place in the flusher pool; a restarted flusher takes the same slot."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.counters = FLUSHER_COUNTERS.new_slot()
        self.proc: Any = None
        self.conn: Connection | None = None
        self.rings: set[str] = set()
        self.restarts = 0
        self.started_at = 0.0
        self.restart_at = 0.0
        self.up = False  # maintained by the main thread; read by HTTP threads

    def alive(self) -> bool:
        return self.up

    def send(self, msg: tuple[Any, ...]) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send(msg)
        except (OSError, ValueError):
            pass  # the flusher is dying; its death is handled with its rings


class _RingInfo:
    __slots__ = ("reader", "slot")

    def __init__(self, reader: ringbuf.RingReader, slot: _Slot) -> None:
        self.reader = reader
        self.slot = slot


class Supervisor:
    def __init__(self, cfg: CollectorConfig) -> None:
        self.cfg = cfg
        self.rings_dir = Path(cfg.rings_dir)
        self.ctx = mp.get_context("spawn")
        self.slots = [_Slot(i) for i in range(cfg.pool_size)]
        self.rings: dict[str, _RingInfo] = {}
        self.refused: dict[str, tuple[int, int, int]] = {}
        self.ring_snapshot: list[ringbuf.RingStats] = []
        self.removed_drops = [0, 0]  # dropped_full, dropped_oversize of removed rings
        self.quarantined_total = 0
        self.removed_total = 0
        self.keys = shard_keys(cfg.stream_key, cfg.stream_shards)
        self.embedded: EmbeddedRedis | None = None
        self.http: HealthServer | None = None
        self.client: redis.Redis | None = None
        self.stopping = False
        self.signals = 0
        self._lock_fd = -1
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.limiter = RateLimited(10.0)

    # -- start ------------------------------------------------------------------------
    def _lock_rings_dir(self) -> None:
        try:
            ringbuf.ensure_private_directory(self.rings_dir)
        except ringbuf.RingPermissionError as exc:
            raise DaemonError(f"rings_dir: {exc}") from None
        except OSError as exc:
            raise DaemonError(f"rings_dir={str(self.rings_dir)!r}: cannot create it: "
                              f"{exc.strerror}") from None
        path = self.rings_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DaemonError(
                f"rings_dir {self.rings_dir} is served by another collector-daemon "
                f"(it holds {path}); one daemon per rings directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _wait_for_redis(self) -> bool:
        assert self.client is not None
        url = self.cfg.redacted_redis_url()
        deadline = time.monotonic() + self.cfg.startup_redis_wait_s
        delay = 0.05
        last: BaseException | None = None
        logged = False
        while not self.stopping:
            try:
                self.client.ping()
                _log.info("Redis is reachable.", url=url)
                return True
            except (redis.exceptions.AuthenticationError,
                    redis.exceptions.NoPermissionError) as exc:
                _log.error("Redis refused the credentials; check redis_username and "
                           "redis_password (or COLLECTOR_REDIS_PASSWORD).", url=url,
                           error=str(exc))
                return False
            except (redis.RedisError, OSError) as exc:
                last = exc
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not logged:
                logged = True
                _log.warning("Redis is not reachable yet; waiting.", url=url,
                             startup_redis_wait_s=self.cfg.startup_redis_wait_s, error=str(last))
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)
        if self.stopping:
            return False
        _log.error(f"Redis at {url} is unreachable after startup_redis_wait_s="
                   f"{self.cfg.startup_redis_wait_s}s; exiting.", url=url, error=str(last))
        return False

    def _start_flusher(self, slot: _Slot) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(
            target=flusher_main,
            args=(slot.index, self.cfg, child, slot.counters, os.getpid(), sorted(slot.rings)),
            name=f"collector-flusher-{slot.index}",
        )
        proc.start()
        child.close()
        slot.proc = proc
        slot.conn = parent
        slot.started_at = time.monotonic()
        slot.up = True
        _log.info("Started a flusher.", slot=slot.index, pid=proc.pid, rings=len(slot.rings))

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
        for slot in self.slots:
            if slot.proc is not None and slot.proc.pid:
                try:
                    os.kill(slot.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
        if self.embedded is not None and self.embedded.proc is not None:
            try:
                self.embedded.proc.terminate()  # flushes its append-only file
            except OSError:
                pass
        os._exit(EXIT_FORCED)

    # -- scanning -----------------------------------------------------------------------
    def _least_loaded(self) -> _Slot:
        return min(self.slots, key=lambda s: (len(s.rings), s.index))

    def _quarantine(self, path: str, why: str) -> None:
        qdir = self.rings_dir / QUARANTINE
        try:
            qdir.mkdir(mode=0o700, exist_ok=True)
            name = os.path.basename(path)
            dest = qdir / name
            if dest.exists():
                dest = qdir / f"{name}.{int(time.time() * 1000)}"
            os.rename(path, dest)
        except FileNotFoundError:
            return
        except OSError as exc:
            _log.error("Cannot quarantine a bad ring file; ignoring it.", ring=path,
                       why=why, error=str(exc))
            self.refused[path] = self._stat_key(path)
            return
        self.quarantined_total += 1
        _log.error("Quarantined a ring file that is not a valid ring; the other rings are "
                   "still served.", ring=path, moved_to=str(dest), why=why)

    @staticmethod
    def _stat_key(path: str) -> tuple[int, int, int]:
        try:
            st = os.stat(path)
        except OSError:
            return (-1, -1, -1)
        return (st.st_uid, stat.S_IMODE(st.st_mode), st.st_ino)

    def _refuse(self, path: str, why: str) -> None:
        self.refused[path] = self._stat_key(path)
        _log.error("Refused a ring: it must be owned by this user and not writable by "
                   "group or others.", ring=path, why=why)

    def _adopt(self, path: str) -> None:
        try:
            reader = ringbuf.RingReader.open(path)
        except ringbuf.RingPermissionError as exc:
            self._refuse(path, str(exc))
            return
        except (ringbuf.NotARing, ringbuf.RingCorrupted) as exc:
            self._quarantine(path, str(exc))
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            held = self.limiter.hit("open:" + path)
            if held is not None:
                _log.error("Cannot open a ring.", ring=path, error=str(exc), suppressed=held)
            return
        slot = self._least_loaded()
        self.rings[path] = _RingInfo(reader, slot)
        slot.rings.add(path)
        slot.send(("assign", path))
        _log.info("Found a ring.", ring=path, ring_id=reader.ring_id, slot=slot.index,
                  producer_pid=reader.producer_pid)

    def _forget(self, path: str) -> None:
        info = self.rings.pop(path, None)
        if info is None:
            return
        info.slot.rings.discard(path)
        info.slot.send(("release", path))
        info.reader.close()

    def scan(self) -> None:
        try:
            names = os.listdir(self.rings_dir)
        except OSError as exc:
            held = self.limiter.hit("listdir")
            if held is not None:
                _log.error("Cannot list the rings directory.", rings_dir=str(self.rings_dir),
                           error=str(exc), suppressed=held)
            return
        seen: set[str] = set()
        for name in names:
            if not name.endswith(ringbuf.RING_SUFFIX) or name.startswith("."):
                continue
            path = str(self.rings_dir / name)
            seen.add(path)
            if path in self.rings:
                continue
            if path in self.refused:
                if self._stat_key(path) == self.refused[path]:
                    continue
                del self.refused[path]  # owner or mode changed: look again
            if not self.stopping:
                self._adopt(path)
        for path in [p for p in self.rings if p not in seen]:
            _log.warning("A ring file disappeared; forgetting it.", ring=path)
            self._forget(path)
        for path in [p for p in self.refused if p not in seen]:
            del self.refused[path]
        snapshot = []
        for path, info in list(self.rings.items()):
            try:
                st = info.reader.stats()
            except (ValueError, OSError):
                continue
            if ((st.closed or not st.producer_alive) and st.bytes_used == 0
                    and st.written == st.committed):
                self._remove(path, st)
            else:
                snapshot.append(st)
        self.ring_snapshot = snapshot

    def _remove(self, path: str, st: ringbuf.RingStats) -> None:
        """Remove a drained ring of a dead (or closed) producer."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            _log.error("Cannot remove a drained ring.", ring=path, error=str(exc))
            return
        self._forget(path)
        self.removed_drops[0] += st.dropped_full
        self.removed_drops[1] += st.dropped_oversize
        self.removed_total += 1
        _log.info("Removed the drained ring of a finished producer.", ring=path,
                  ring_id=st.ring_id, producer_pid=st.producer_pid, records=st.written,
                  dropped=st.dropped, closed=st.closed)

    # -- events ---------------------------------------------------------------------------
    def _on_message(self, slot: _Slot, msg: tuple[Any, ...]) -> None:
        if msg[0] != "bad":
            return
        _, path, kind, message = msg
        info = self.rings.pop(path, None)
        if info is not None:
            info.slot.rings.discard(path)
            info.reader.close()
        slot.rings.discard(path)
        if kind == "permission":
            self._refuse(path, message)
        else:
            self._quarantine(path, message)

    def _on_flusher_exit(self, slot: _Slot) -> None:
        proc = slot.proc
        proc.join(1)
        slot.up = False
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        if self.stopping:
            return
        lived = time.monotonic() - slot.started_at
        _log.error("A flusher died; restarting it. Its rings resume from their committed "
                   "head (the batch in flight, if any, is sent again).", slot=slot.index,
                   pid=proc.pid, exitcode=proc.exitcode, rings=len(slot.rings))
        slot.restarts += 1
        slot.proc = None
        # A flusher that keeps dying at once is restarted at most once a second.
        slot.restart_at = time.monotonic() + (1.0 if lived < 1.0 else 0.0)

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
        for s in self.slots:
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
            "rings": len(self.ring_snapshot),
            "rings_refused": len(self.refused),
        }
        if error:
            detail["redis"]["error"] = error
        if self.embedded is not None:
            detail["redis"]["embedded"] = True
            detail["redis"]["embedded_alive"] = self.embedded.alive()
        return ready, detail

    def backlog(self) -> dict[str, int]:
        try:
            assert self.client is not None
            pipe = self.client.pipeline(transaction=False)
            for k in self.keys:
                pipe.xlen(k)
            return dict(zip(self.keys, (int(x) for x in pipe.execute()), strict=True))
        except (redis.RedisError, OSError, AssertionError):
            return {}

    # -- main ------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.cfg
        self._install_signals()
        try:
            self._lock_rings_dir()
            if cfg.embedded_redis:
                self.embedded = EmbeddedRedis(cfg.redis_server, cfg.runtime_dir)
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
            if not self._wait_for_redis():
                self._cleanup()
                return EXIT_OK if self.stopping else EXIT_REDIS
            if not cfg.enabled:
                _log.info("Reporting is disabled (enabled: false); the daemon still drains "
                          "the rings it finds.")
            self.scan()  # assign what is already there before the flushers start
            for slot in self.slots:
                self._start_flusher(slot)
            _log.info("collector-daemon is running.", rings_dir=str(self.rings_dir),
                      pool_size=cfg.pool_size, redis=cfg.redacted_redis_url(),
                      shards=len(self.keys), rings=len(self.rings))
            self._loop()
            return self._shutdown()
        except (DaemonError, EmbeddedRedisError) as exc:
            _log.error(str(exc))
            self._cleanup()
            return EXIT_CONFIG

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
            for slot in self.slots:
                if slot.proc is None and now >= slot.restart_at and not self.stopping:
                    self._start_flusher(slot)
            self._wait_events(max(0.0, next_scan - time.monotonic()))

    def _wait_events(self, timeout: float) -> None:
        objs: list[Any] = [self._wake_r]
        by_obj: dict[Any, tuple[str, _Slot]] = {}
        for slot in self.slots:
            if slot.proc is not None and slot.up:
                by_obj[slot.proc.sentinel] = ("dead", slot)
                objs.append(slot.proc.sentinel)
            if slot.conn is not None:
                by_obj[slot.conn] = ("msg", slot)
                objs.append(slot.conn)
        ready = wait(objs, timeout)
        for obj in ready:
            if obj is self._wake_r:
                try:
                    while self._wake_r.recv(64):  # type: ignore[union-attr]
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            kind, slot = by_obj[obj]
            if kind == "msg":
                try:
                    while slot.conn is not None and slot.conn.poll(0):
                        self._on_message(slot, slot.conn.recv())
                except (EOFError, OSError):
                    pass  # the sentinel reports the death
        for obj in ready:
            if obj in by_obj and by_obj[obj][0] == "dead":
                self._on_flusher_exit(by_obj[obj][1])

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.cfg.shutdown_timeout_s
        for slot in self.slots:
            slot.send(("stop", deadline))
        while True:
            running = [s for s in self.slots if s.proc is not None and s.up]
            if not running:
                break
            left = deadline + 2.0 - time.monotonic()
            if left <= 0:
                for s in running:
                    _log.error("A flusher did not stop in time; killing it (its records stay "
                               "in its rings).", slot=s.index, pid=s.proc.pid)
                    s.proc.kill()
                    s.proc.join(5)
                    s.up = False
                break
            self._wait_events(min(left, 0.5))
        self.scan()  # remove the rings of finished producers that are now drained
        pending = sum(s.pending for s in self.ring_snapshot)
        self._cleanup()
        _log.info("collector-daemon stopped.", records_left_in_rings=pending,
                  rings=len(self.ring_snapshot))
        return EXIT_OK

    def _cleanup(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.up:
                slot.proc.kill()
                slot.proc.join(5)
                slot.up = False
        for info in self.rings.values():
            info.reader.close()
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
