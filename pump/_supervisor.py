"""The pump supervisor: worker pools, health endpoints, trimming, signals.

It spawns ``workers`` processes per sink (multiprocessing ``spawn`` context:
no fork after threads), restarts a worker that died (with a backoff when it
keeps dying) and SIGKILLs one whose write overran its deadline by
``stuck_write_grace_s`` (a Python thread cannot be interrupted; a process
can). It serves ``/<health_path>``, ``/readyz`` and ``/metrics`` on
``health_address``, trims every shard below what all groups have
acknowledged, and for ``source.type: list`` moves the seed's list into the
stream.

Signals: SIGTERM and SIGINT are blocked in every thread and collected by the
main loop with ``sigtimedwait`` (no async handler can interrupt a lock). The
first one stops: workers get SIGTERM, finish and acknowledge their in-flight
batch within ``shutdown_timeout_s``, close their sinks and exit; stragglers
are killed (their entries stay pending and are redelivered on the next
start). A second signal kills the workers and exits at once with status 1.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing import get_context, resource_tracker
from multiprocessing.process import BaseProcess
from typing import Any

import redis
from prometheus_client import CollectorRegistry

from collector.common.counters import Slot
from collector.common.health import HealthServer
from collector.common.log import RateLimited, get_logger
from collector.common.private import NotPrivate, private_directory, private_socket
from collector.common.redisconn import wait_for_redis
from collector.common.stream import SOCKET_NAME, default_runtime_dir

from ._budget import Budget
from ._groups import ForeignReport, foreign_rows
from ._metrics import STATE_OUTAGE, STATE_STARTING, WORKER_COUNTERS, PumpCollector
from ._redis import connect, ensure_groups, group_lag, oldest_unacked_ms, trim_acknowledged
from ._source import ListMover
from ._worker import worker_main
from .config import PumpConfig
from .sinks import Sink, build_sink

log = get_logger(__name__)

_SIGNALS = {signal.SIGTERM, signal.SIGINT}
EXIT_OK = 0
EXIT_CONFIG = 2  # a directory or socket another user could control
EXIT_REDIS = 3  # Redis refused the credentials or stayed unreachable at start
_HEALTH_CACHE_S = 1.0


OUTAGE_REASON_BYTES = 512


class _Slot:
    def __init__(self, sink: str, index: int, counters: Slot, outage_reason: Any) -> None:
        self.sink = sink
        self.index = index
        self.counters = counters
        self.outage_reason = outage_reason  # shared chars: why the worker holds a batch
        self.proc: BaseProcess | None = None
        self.started = 0.0
        self.streak = 0
        self.restart_at = 0.0
        self.restarts = 0


def _text(shared: Any) -> str:
    """A shared char array's text (written by a worker; a torn read only garbles it)."""
    return bytes(shared.value).decode("utf-8", "replace")


class Supervisor:
    def __init__(self, config: PumpConfig, *, label: str = "config") -> None:
        self.config = config
        self.label = label
        self.ctx = get_context("spawn")
        self.keys = config.shard_keys()
        self.slots: list[_Slot] = []
        by_sink: dict[str, list[Slot]] = {}
        for sink, spec in config.pumps.items():
            for i in range(spec.workers):
                counters = WORKER_COUNTERS.new_slot(self.ctx)
                reason = self.ctx.Array("c", OUTAGE_REASON_BYTES)
                self.slots.append(_Slot(sink, i, counters, reason))
                by_sink.setdefault(sink, []).append(counters)
        self.r = connect(config)
        self.budget = Budget(config, self.r, report=True)
        self.stopping = False
        self.limited = RateLimited(10.0, log)
        self._health_sinks: dict[str, Sink | None] = {}
        self._health_cache: dict[str, tuple[float, str | None]] = {}
        self._health_lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PumpCollector(
            by_sink, self._lag_rows,
            lambda sink: sum(sl.restarts for sl in self.slots if sl.sink == sink),
            self._alive_count, self._foreign_rows, self._trim_totals, self.readiness,
            self.budget))
        self.httpd: HealthServer | None = None
        self.mover: ListMover | None = None
        self._threads: list[threading.Thread] = []
        self._next_trim = time.monotonic() + config.trim_interval_s
        self.trim_groups = config.trim_groups()
        self.foreign = ForeignReport()
        self.trims = 0  # trim passes done
        self.trimmed = 0  # entries they removed

    # -- views -----------------------------------------------------------------
    def _alive_count(self, sink: str) -> int:
        return sum(1 for s in self.slots if s.sink == sink and s.proc is not None
                   and s.proc.is_alive())

    def _lag_rows(self) -> list[tuple[str, str, float, float, float]]:
        """(sink, stream, lag, pending, age in s of the oldest unacknowledged entry or 0)."""
        rows = []
        now_ms = time.time() * 1000
        for sink in self.config.pumps:
            for key in self.keys:
                lag, pending = group_lag(self.r, key, sink)
                oldest = oldest_unacked_ms(self.r, key, sink) if lag or pending else None
                age = max(0.0, now_ms - oldest) / 1000 if oldest is not None else 0.0
                rows.append((sink, key, float(lag), float(pending), age))
        return rows

    def _foreign_rows(self) -> list[tuple[str, str, int | None, int]]:
        return foreign_rows(self.r, self.config)

    def _trim_totals(self) -> tuple[int, int]:
        return self.trims, self.trimmed

    def worker_pids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for s in self.slots:
            if s.proc is not None and s.proc.is_alive() and s.proc.pid:
                out.setdefault(s.sink, []).append(s.proc.pid)
        return out

    def _sink_health(self, sink: str) -> str | None:
        """None when healthy, else the error text (cached for a second)."""
        now = time.monotonic()
        with self._health_lock:
            cached = self._health_cache.get(sink)
            if cached and now - cached[0] < _HEALTH_CACHE_S:
                return cached[1]
            spec = self.config.pumps[sink]
            error: str | None = None
            try:
                inst = self._health_sinks.get(sink)
                if inst is None:
                    inst = build_sink(self.config.sink_type(sink), spec.meta)
                    inst.open()
                    self._health_sinks[sink] = inst
                inst.health_check(deadline=time.monotonic() + min(spec.timeout_s, 5.0))
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            self._health_cache[sink] = (time.monotonic(), error)
            return error

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready = not self.stopping
        detail: dict[str, Any] = {"status": "stopping" if self.stopping else "ok"}
        try:
            self.r.ping()
            detail["redis"] = {"ok": True, "url": self.config.redacted_redis_url()}
            redis_ok = True
        except redis.RedisError as exc:
            detail["redis"] = {"ok": False, "url": self.config.redacted_redis_url(),
                               "error": str(exc)}
            ready = redis_ok = False
        sinks: dict[str, Any] = {}
        for sink, spec in self.config.pumps.items():
            err = self._sink_health(sink)
            alive = self._alive_count(sink)
            held = [s for s in self.slots if s.sink == sink
                    and s.counters.get("state") == STATE_OUTAGE]
            info: dict[str, Any] = {
                "healthy": err is None and not held, "workers": spec.workers,
                "workers_alive": alive, "workers_in_outage": len(held),
                "pids": self.worker_pids().get(sink, []),
            }
            if held:  # a worker holds a batch the sink refuses to everybody
                reasons = sorted({_text(s.outage_reason) for s in held} - {""})
                info["outage"] = reasons or ["a worker holds a batch the sink does not take"]
                err = err or info["outage"][0]
            if err is not None:
                info["error"] = err
            ok = err is None and alive == spec.workers
            if redis_ok:
                lags: dict[str, Any] = {}
                try:
                    for key in self.keys:
                        lag, pending = group_lag(self.r, key, sink)
                        lags[key] = {"lag": lag, "pending": pending}
                        if lag + pending > self.config.max_lag_entries:
                            ok = False
                            lags[key]["over_limit"] = self.config.max_lag_entries
                except redis.RedisError as exc:
                    ok = False
                    info["lag_error"] = str(exc)
                info["lag"] = lags
            info["ready"] = ok
            ready = ready and ok
            sinks[sink] = info
        detail["sinks"] = sinks
        detail["ready"] = ready
        return ready, detail

    # -- http --------------------------------------------------------------------
    def _start_http(self) -> None:
        health_path = "/" + self.config.health_path

        def on_error(path: str, exc: Exception) -> None:
            self.limited.error("http", "Health endpoint failed.",
                            path=path, error=exc)

        host, port = self.config.health_host_port
        self.httpd = HealthServer(host, port, readiness=self.readiness, registry=self.registry,
                                  health_path=health_path, on_error=on_error, name="pump-http")
        self.httpd.start()
        log.info("Serving health and metrics.", address=f"{host}:{port}",
                 health=health_path)

    # -- workers -------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        slot.counters.set("write_deadline", 0.0)  # a killed worker cannot clear its own
        slot.counters.set("state", STATE_STARTING)
        proc = self.ctx.Process(target=worker_main,
                                args=(self.config, slot.sink, slot.index, slot.counters,
                                      slot.outage_reason),
                                name=f"pump-{slot.sink}-{slot.index}", daemon=False)
        proc.start()
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        slot.proc = proc
        slot.started = time.monotonic()

    def _tick(self) -> None:
        now = time.monotonic()
        self.budget.refresh(now)
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.is_alive():
                deadline = slot.counters.get("write_deadline")
                if deadline and now > deadline + self.config.stuck_write_grace_s:
                    log.error("Worker's write overran its deadline; killing it.",
                              sink=slot.sink, worker=slot.index, pid=proc.pid,
                              overrun_s=round(now - deadline, 1))
                    proc.kill()
                continue
            if proc is not None:
                code = proc.exitcode
                proc.join(0)
                slot.proc = None
                slot.restarts += 1
                slot.streak = slot.streak + 1 if now - slot.started < 10 else 0
                delay = min(30.0, 0.25 * (2 ** min(slot.streak, 7))) if slot.streak else 0.0
                slot.restart_at = now + delay
                log.warning("Worker exited; restarting it.", sink=slot.sink,
                            worker=slot.index, exitcode=code, delay_s=round(delay, 2))
            if now >= slot.restart_at:
                self._spawn(slot)
        if self.config.trim and (now >= self._next_trim or self._stream_filling()):
            self._next_trim = now + self.config.trim_interval_s
            self.trim()

    def _stream_filling(self) -> bool:
        """A shard holds a quarter of its share of the budget or more (``MEMORY USAGE``):
        trim now, not at the next ``trim_interval_s``, so that what every group has
        acknowledged (or a spooler moved) leaves Redis before the daemon holds back."""
        mark = self.budget.per_shard() // 4
        try:
            return any(int(self.r.memory_usage(key) or 0) >= mark for key in self.keys)
        except redis.RedisError:  # an ACL user without MEMORY: trim_interval_s alone
            return False

    def trim(self) -> int:
        """Trim every shard below what the configured (and respected) groups acknowledged."""
        removed = 0
        for key in self.keys:
            try:
                removed += trim_acknowledged(self.r, key, self.trim_groups)
            except redis.RedisError as exc:
                self.limited.warning("trim", "Trimming the stream failed.",
                                     stream=key, error=exc)
        try:
            self.foreign.check(self.r, self.config)  # a new foreign group: said once
        except redis.RedisError:
            pass
        self.trims += 1
        self.trimmed += removed
        if removed:
            log.debug("Trimmed acknowledged entries.", entries=removed)
        return removed

    # -- main ------------------------------------------------------------------------
    def run(self) -> int:
        # The resource tracker unblocks SIGINT/SIGTERM after starting itself:
        # start it first, and block again after every spawn to be sure.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        cfg = self.config
        sinks = ",".join(f"{n}:{cfg.sink_type(n)}x{s.workers}" for n, s in cfg.pumps.items())
        log.info("collector-pump starting.", config=self.label, instance=cfg.instance(),
                 redis=cfg.redacted_redis_url(),
                 streams=",".join(self.keys), sinks=sinks)
        if cfg.redis_url is None:  # the daemon's embedded Redis: its directory must be ours
            runtime = default_runtime_dir()
            try:
                private_directory(runtime, "runtime directory of the embedded Redis")
                private_socket(runtime / SOCKET_NAME, "runtime directory of the embedded Redis")
            except NotPrivate as exc:
                log.error(f"{exc}; exiting.")
                return EXIT_CONFIG
        if not wait_for_redis(self.r, cfg, lambda: bool(signal.sigpending() & _SIGNALS)):
            return EXIT_OK if signal.sigpending() & _SIGNALS else EXIT_REDIS
        try:
            for sink in cfg.pumps:
                ensure_groups(self.r, self.keys, sink)
            self.foreign.check(self.r, cfg)
            self.budget.refresh(time.monotonic())
        except redis.RedisError as exc:
            log.warning("Redis is not reachable; workers will keep trying.",
                        redis=cfg.redacted_redis_url(), error=exc)
        try:
            self._start_http()
        except OSError as exc:
            log.error("Cannot serve health and metrics; stopping.",
                      address=cfg.health_address, error=exc)
            return 1
        if cfg.source.type == "list":
            self.mover = ListMover(cfg, connect(cfg))
            t = threading.Thread(target=self.mover.run, name="pump-list-mover", daemon=True)
            t.start()
            self._threads.append(t)
        for slot in self.slots:
            self._spawn(slot)
        while True:
            sig = signal.sigtimedwait(_SIGNALS, 0.25)
            if sig is not None:
                log.info("Signal received; stopping.",
                         signal=signal.Signals(sig.si_signo).name)
                break
            self._tick()
        return self._shutdown()

    def _shutdown(self) -> int:
        self.stopping = True
        if self.mover is not None:
            self.mover.stop.set()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.is_alive():
                try:
                    os.kill(slot.proc.pid or 0, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.config.shutdown_timeout_s + 2.0
        while any(s.proc is not None and s.proc.is_alive() for s in self.slots):
            left = deadline - time.monotonic()
            if left <= 0:
                for s in self.slots:
                    if s.proc is not None and s.proc.is_alive():
                        log.warning("Worker did not stop in time; killing it.",
                                    sink=s.sink, worker=s.index, pid=s.proc.pid)
                        s.proc.kill()
                break
            sig = signal.sigtimedwait(_SIGNALS, min(0.05, left))
            if sig is not None:
                log.warning("Second signal; exiting at once.")
                for s in self.slots:
                    if s.proc is not None and s.proc.is_alive():
                        s.proc.kill()
                os._exit(1)
        for s in self.slots:
            if s.proc is not None:
                s.proc.join(5)
        for name, inst in self._health_sinks.items():
            if inst is not None:
                try:
                    inst.close(1.0)
                except Exception as exc:
                    log.warning("Closing the sink failed.", sink=name, error=exc)
        if self.httpd is not None:
            self.httpd.stop()
        log.info("collector-pump stopped.")
        return 0

