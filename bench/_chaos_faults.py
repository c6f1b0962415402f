"""``bench chaos``: the faults it injects, how each is undone, and how every sink is read back."""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from collector.testing import (
    Daemon,
    HttpPeer,
    Pump,
    RedisServer,
    drop_tables,
    jsonl_records,
    locked_tables,
    record_key,
    stream_entries,
)

from ._chaos_ledger import LASTING, Fault
from ._chaos_spool import HttpTarget, Watch

KINDS = (
    "producer_kill", "flusher_kill", "daemon_kill", "pump_worker_kill", "pump_kill",
    "redis_restart", "http_outage", "postgres_outage", "daemon_stop", "hung_sink",
    "foreign_group",
)


class Faults:
    """Fault injection, healing and reading back, mixed into ``bench._chaos_stack.Chaos``."""

    args: argparse.Namespace
    rng: random.Random
    workdir: Path
    sinks: list[str]
    pg_table: str
    t0: float
    faults: list[Fault]
    redis: RedisServer
    daemon: Daemon
    pump: Pump
    http: HttpPeer
    target: HttpTarget
    watch: Watch
    later: list[tuple[threading.Timer, Callable[[], None]]]

    # provided by Chaos
    def returned_false(self) -> int: ...
    def live_producers(self) -> list[Any]: ...
    def stream_keys(self) -> list[str]: ...
    def start_producer(self) -> Any: ...
    def say(self, msg: str) -> None: ...

    # -- faults ---------------------------------------------------------------
    def _pick(self, procs: list[psutil.Process]) -> psutil.Process | None:
        procs = sorted(procs, key=lambda p: p.pid)
        return procs[self.rng.randrange(len(procs))] if procs else None

    def _kill_one(self, procs: list[psutil.Process], what: str) -> str:
        """SIGKILL one of ``procs``, picked by the seeded RNG; the fault's detail."""
        victim = self._pick(procs)
        if victim is None:
            return f"no {what} alive (skipped)"
        victim.kill()
        return f"{what} pid {victim.pid}"

    def _crash(self, service: Daemon | Pump, what: str, hold: float) -> str:
        """kill -9 of the whole service, down ``hold`` seconds, started again."""
        service.kill_all()
        time.sleep(hold)
        service.start(timeout=60)
        return f"{what} down {hold}s"

    def _after(self, delay: float, f: Fault, undo: Callable[[], None]) -> None:
        """Undo ``f`` in ``delay`` seconds (or at :meth:`heal`), once; its held_s and
        producer drops then."""
        done = threading.Lock()
        drops0 = self.returned_false()

        def once() -> None:
            if not done.acquire(blocking=False):
                return
            for attempt in range(60):  # Redis may be restarting under another fault
                try:
                    undo()
                    break
                except Exception as exc:
                    if attempt == 59:
                        self.say(f"fault {f.n} {f.kind} could not be undone: {exc!r}")
                    time.sleep(1.0)
            f.held_s = round(time.monotonic() - self.t0 - f.at, 2)
            f.producer_drops = self.returned_false() - drops0
            self.say(f"fault {f.n:>3} {f.kind:<17} over after {f.held_s}s; "
                     f"producers dropped {f.producer_drops:,} meanwhile")

        t = threading.Timer(delay, once)
        t.daemon = True
        self.later.append((t, once))
        t.start()

    def _foreign(self, f: Fault, hold: float) -> None:
        budget = self.args.max_backlog_bytes // len(self.stream_keys())
        life = self.watch.create_foreign(f.n, budget, self.returned_false())
        f.detail = (f"groups {', '.join(life.groups)} (at $, at 0, at 0 with 5 entries "
                    f"pending) on {len(self.stream_keys())} shard(s) for {hold}s")

        def destroy() -> None:
            f.extra = self.watch.destroy_foreign(life, self.returned_false())
            e = f.extra
            self.say(f"fault {f.n:>3} foreign_group      destroyed: {e['entries_trimmed']:,} "
                     f"entries trimmed meanwhile, largest shard {e['max_xlen']:,} entries / "
                     f"{e['max_bytes']:,} B ({e['max_bytes_of_budget']:.0%} of its budget), "
                     f"trimmed past the groups: {e['trimmed_past_the_groups']}")
        self._after(hold, f, destroy)

    def inject(self, n: int, kind: str) -> Fault:
        f = Fault(n, kind, time.monotonic() - self.t0, time.time())
        rng = self.rng
        hold = round(rng.uniform(self.args.hold_min, self.args.hold_max), 2)
        drops0 = self.returned_false()
        undone_later = kind in LASTING
        if kind == "producer_kill":
            live = self.live_producers()
            if live:
                victim = live[rng.randrange(len(live))]
                os.kill(victim.proc.pid, signal.SIGKILL)
                victim.proc.join(10)
                victim.killed_at = time.time()
                new = self.start_producer()
                f.detail = (f"producer {victim.producer_id} (pid {victim.proc.pid}) killed "
                            f"after {int(victim.state[1])} calls; producer {new.producer_id} "
                            "started")
        elif kind == "flusher_kill":
            f.detail = self._kill_one(self.flushers(), "flusher")
        elif kind == "daemon_kill":
            f.detail = self._crash(self.daemon, "daemon", hold)
        elif kind == "pump_worker_kill":
            f.detail = self._kill_one(self.pump.children(), "pump worker")
        elif kind == "pump_kill":
            f.detail = self._crash(self.pump, "pump", hold)
        elif kind == "redis_restart":
            lagging = self.args.redis_no_persistence and "http" in self.sinks
            if lagging:
                # let the http sink fall behind first, so Redis holds records that
                # not every sink has read when it restarts (the window to show)
                self.target.refuse(True)
                time.sleep(1.5)
            self.redis.kill()
            f.detail = f"redis kill -9, down {hold}s"
            if getattr(self.redis, "last_killed", None):  # --cluster: one master
                f.detail = (f"cluster master on port {self.redis.last_killed} kill -9, "
                            f"down {hold}s")
            time.sleep(hold)
            self.redis.start()
            if lagging:
                self.target.refuse(False)
                f.detail += " (http sink answering 503 for 1.5 s before, until it was back)"
        elif kind == "http_outage":
            self.target.refuse(True)
            f.detail = f"http sink answers 503 for {hold}s"
            time.sleep(hold)
            self.target.refuse(False)
        elif kind == "hung_sink":
            hung = round(rng.uniform(self.args.hung_min, self.args.hung_max), 2)
            self.target.hang()
            f.detail = f"http target accepts and never answers for {hung}s"
            self._after(hung, f, self.target.unhang)
        elif kind == "foreign_group":
            self._foreign(f, round(rng.uniform(self.args.foreign_min, self.args.foreign_max), 2))
        elif kind == "postgres_outage":
            f.detail = self._pg_lock(hold)
        elif kind == "daemon_stop":
            pgid = self.daemon.pid
            if pgid is not None:
                os.killpg(pgid, signal.SIGSTOP)
                f.detail = f"daemon SIGSTOP for {hold}s"
                time.sleep(hold)
                os.killpg(pgid, signal.SIGCONT)
        else:  # pragma: no cover - KINDS is closed
            raise ValueError(f"unknown fault kind {kind!r}")
        if not undone_later:
            f.held_s = round(time.monotonic() - self.t0 - f.at, 2)
            f.producer_drops = self.returned_false() - drops0
        self.faults.append(f)
        self.say(f"fault {n:>3} {kind:<17} {f.detail}")
        return f

    def flushers(self) -> list[psutil.Process]:
        """The daemon's flusher processes, as its /readyz lists them."""
        pids: set[int] = set()
        try:
            pids = set(self.daemon.flusher_pids())
        except (ConnectionError, ValueError, TypeError, KeyError):
            pass
        kids = self.daemon.children()
        return [k for k in kids if k.pid in pids] if pids else kids

    def _pg_lock(self, hold: float) -> str:
        import psycopg

        try:
            with locked_tables(self.pg_table, dsn=self.args.pg_dsn, lock_timeout_s=5):
                time.sleep(hold)
            return f"postgres table {self.pg_table} locked for {hold}s"
        except psycopg.Error as exc:
            return f"could not lock the table ({exc.__class__.__name__}: {exc})"

    def kinds(self) -> list[str]:
        kinds = [k for k in KINDS if self.args.kinds is None or k in self.args.kinds]
        if "http" not in self.sinks:
            kinds = [k for k in kinds if k not in ("http_outage", "hung_sink")]
        if "postgres" not in self.sinks:
            kinds = [k for k in kinds if k != "postgres_outage"]
        return kinds

    # -- healing and reading back ----------------------------------------------
    def heal(self) -> None:
        if not self.redis.is_running():
            self.redis.start()
        for timer, once in self.later:  # hung sinks answer again, foreign groups go
            timer.cancel()
            once()
        self.target.heal()
        if self.daemon.pid is not None:
            try:
                os.killpg(self.daemon.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if not self.daemon.alive():
            self.daemon.start(wait=False)
        if not self.pump.alive():
            self.pump.start(wait=False)

    def file_deliveries(self) -> tuple[collections.Counter[tuple[int, int]],
                                       dict[tuple[int, int], float]]:
        counts: collections.Counter[tuple[int, int]] = collections.Counter()
        sent_at: dict[tuple[int, int], float] = {}

        def torn(_line: bytes) -> None:  # counted, as unexpected
            counts[(-1, -1)] += 1

        for r in jsonl_records(self.workdir / "out" / "file.jsonl", on_error=torn):
            try:
                key = record_key(r)
            except (KeyError, TypeError, ValueError):
                key = (-1, -1)
            counts[key] += 1
            sent_at.setdefault(key, float(r.get("sent_at") or 0.0))
        return counts, sent_at

    def pg_deliveries(self) -> tuple[collections.Counter[tuple[int, int]],
                                     dict[tuple[int, int], float]]:
        import psycopg

        counts: collections.Counter[tuple[int, int]] = collections.Counter()
        sent_at: dict[tuple[int, int], float] = {}
        with psycopg.connect(self.args.pg_dsn, connect_timeout=10) as conn:
            rows = conn.execute(
                f"SELECT (record->>'producer')::bigint, (record->>'seq')::bigint, "
                f"(record->>'sent_at')::float8 FROM {self.pg_table}").fetchall()
        for producer, seq, t in rows:
            key = (int(producer), int(seq))
            counts[key] += 1
            sent_at.setdefault(key, float(t or 0.0))
        return counts, sent_at

    def dead_letters(self) -> dict[str, set[tuple[int, int]]]:
        """Records on each sink's dead-letter stream ``<shard>:dead:<sink>``."""
        import msgpack

        from collector.common.stream import decode_entry

        out: dict[str, set[tuple[int, int]]] = {s: set() for s in self.sinks}
        client = self.redis.client(socket_timeout=10)
        for key in client.scan_iter(match="*:dead:*", count=1000):
            name = key.decode()
            sink = name.rsplit(":dead:", 1)[1]  # <shard>:dead:<sink> (pump/_worker.py)
            if sink not in out:
                continue
            for _eid, fields in stream_entries(client, [name]):
                try:  # a dead letter keeps the entry's fields, whatever they were
                    entry = decode_entry(fields)
                except Exception:
                    continue
                for raw in entry.records:
                    try:
                        out[sink].add(record_key(msgpack.unpackb(raw)))
                    except Exception:
                        continue
        return out

    def pg_cleanup(self) -> None:
        import psycopg

        try:
            drop_tables(self.pg_table, dsn=self.args.pg_dsn)
        except psycopg.Error:
            pass
