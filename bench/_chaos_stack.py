"""``bench chaos``: the system under test (Redis, daemon, pump, sinks, producers) and a run."""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import random
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from collector.common.stream import shard_keys
from collector.testing import HttpPeer, RedisServer, group_lags, wait_until

from . import _harness as h
from ._chaos_cluster import SHARDS, ClusterRedis, cluster_keys
from ._chaos_faults import Faults
from ._chaos_ledger import LASTING, Fault, Ledger, Producer, SinkReport, producer_main
from ._chaos_spool import HttpTarget, Watch, spool_drops


class Chaos(Faults):
    """One run: set up, inject the faults, heal, wait for quiescence, account."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="collector-chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.ctx = mp.get_context("spawn")
        self.stop_flag = self.ctx.RawValue("b", 0)
        self.ledger = Ledger()
        self.faults: list[Fault] = []
        self.later: list[Any] = []  # faults undone on a timer (hung_sink, foreign_group)
        self.next_producer_id = 0
        self.http_seen: collections.Counter[tuple[int, int]] = collections.Counter()
        self.http_sent_at: dict[tuple[int, int], float] = {}
        self.http_lock = threading.Lock()
        self.ring_stats: dict[str, tuple[int, int, int]] = {}  # ring id -> dropped full/over
        self.pg_table = f"chaos_{os.getpid()}_{self.rng.randrange(1 << 30)}"
        self.sinks = [s for s in args.sinks.split(",") if s]
        self.t0 = time.monotonic()
        self.log_lines: list[str] = []

    # -- logging --------------------------------------------------------------
    def say(self, msg: str) -> None:
        line = f"chaos: {time.monotonic() - self.t0:7.1f}s {msg}"
        self.log_lines.append(line)
        if not self.args.quiet:
            print(line, flush=True)

    # -- set-up ---------------------------------------------------------------
    def _on_http(self, items: list[dict[str, Any]]) -> None:
        with self.http_lock:
            for item in items:  # the http sink's {"id", "record"}
                r = item.get("record") if isinstance(item.get("record"), dict) else {}
                try:
                    key = (int(r["producer"]), int(r["seq"]))
                except (KeyError, TypeError, ValueError):
                    key = (-1, -1)
                self.http_seen[key] += 1
                self.http_sent_at.setdefault(key, float(r.get("sent_at") or 0.0))

    def setup(self) -> None:
        a = self.args
        scale: dict[str, Any] = {}
        if a.cluster:  # bench/_chaos_cluster.py: redis_restart kills a master
            self.redis: Any = ClusterRedis(
                self.workdir / "cluster", self.rng, appendonly=not a.redis_no_persistence,
                appendfsync=a.appendfsync).start()
            scale = {"stream_shards": SHARDS}
        else:
            self.redis = RedisServer(self.workdir / "redis",
                                     appendonly=not a.redis_no_persistence,
                                     appendfsync=a.appendfsync).start()
        self.http = HttpPeer(on_items=self._on_http).start()
        self.target = HttpTarget(self.http)
        self.daemon = h.daemon(
            self.workdir, self.redis.url, pool_size=2, ring_capacity_bytes=a.ring_bytes,
            max_backlog_bytes=a.max_backlog_bytes,
            full_policy="drop", redis_timeout_s=2.0, startup_redis_wait_s=120,
            shutdown_timeout_s=10, min_replicas_acked=a.replicas_acked, **scale)
        self.collector_yaml = self.daemon.config
        pumps: dict[str, Any] = {}
        if "file" in self.sinks:
            pumps["file"] = {"type": "file", "workers": 2, "timeout_s": 3,
                             "meta": {"path": str(self.workdir / "out" / "file.jsonl"),
                                      "format": "jsonl", "fsync": "batch"}}
        if "http" in self.sinks:
            pumps["http"] = {"type": "http", "workers": 1, "timeout_s": 3,
                             "meta": {"url": self.http.url}}
        if "postgres" in self.sinks:
            pumps["postgres"] = {"type": "postgres", "workers": 1, "timeout_s": 3,
                                 "meta": {"dsn": a.pg_dsn, "table": self.pg_table}}
        for sink in pumps.values():  # each sink spools on its own when it lags
            sink.update(spool_max_bytes=a.spool_max_bytes, overflow=a.overflow)
        (self.workdir / "out").mkdir(exist_ok=True)
        self.pump = h.pump(
            self.workdir, self.redis.url, pumps, read_block_s=0.2, claim_idle_ms=5000,
            max_backlog_bytes=a.max_backlog_bytes,
            max_deliveries=1000, batch_deadline_s=4, stuck_write_grace_s=2,
            retry_max_ms=1000, shutdown_timeout_s=10, redis_timeout_s=2.0,
            # the default 10 s between trims would fill the small budget with healthy
            # sinks (4 MiB is ~5 s of these producers)
            trim_interval_s=0.5, **scale)
        self.daemon.start()
        self.pump.start()
        self.watch = Watch(lambda: self.redis.client(socket_timeout=2), self.stream_keys(),
                           self.pump.metrics, self.sinks,
                           trace=self.workdir / "logs" / "shards.txt")
        self.watch.start()
        # a loaded machine takes seconds to spawn the pump's workers: producers start
        # once every worker reads (its consumer is in its group), not before
        client = self.redis.client(socket_timeout=2)

        def reading() -> bool:
            return all(max(len(client.xinfo_consumers(key, sink)) for key in self.stream_keys())
                       >= spec["workers"] for sink, spec in pumps.items())
        wait_until(reading, 120, "every pump worker reading")
        for _ in range(a.producers):
            self.start_producer()

    def start_producer(self) -> Producer:
        pid = self.next_producer_id
        self.next_producer_id += 1
        state = self.ctx.RawArray("q", [-1, 0, 0])
        drops = self.workdir / f"drops-{pid}.txt"
        proc = self.ctx.Process(
            target=producer_main, name=f"producer-{pid}",
            args=(pid, str(self.collector_yaml), self.args.rate, state, str(drops),
                  self.stop_flag))
        proc.start()
        p = Producer(proc.pid or 0, pid, proc, state, drops, time.time(), self.args.rate)
        self.ledger.producers[pid] = p
        return p

    def returned_false(self) -> int:
        """record_hit calls that returned False so far, over every producer."""
        return sum(len(p.drops()) for p in list(self.ledger.producers.values()))

    def live_producers(self) -> list[Producer]:
        return [p for p in self.ledger.producers.values()
                if p.killed_at is None and p.proc.is_alive()]

    # -- watching -------------------------------------------------------------
    def sample_rings(self) -> list[Any]:
        import ringbuf

        stats = ringbuf.discover(self.workdir / "rings")
        for s in stats:
            self.ring_stats[s.ring_id] = (s.dropped_full, s.dropped_oversize, s.written)
        return stats

    def quiet(self) -> tuple[bool, str]:
        rings = self.sample_rings()
        pending = sum(s.pending for s in rings)
        try:
            lag = group_lags(self.redis.client(socket_timeout=2), self.stream_keys())
        except Exception as exc:
            return False, f"redis: {exc}"
        groups_ok = all(name in lag for name in self.sinks)
        busy = {k: v for k, v in lag.items() if v and k in self.sinks}
        try:
            m = self.pump.metrics()
            spooled = {s: m.get(f'collector_pump_spool_entries{{sink="{s}"}}', 0.0)
                       for s in self.sinks}
        except Exception as exc:
            return False, f"pump /metrics: {exc}"
        ok = pending == 0 and groups_ok and not busy and not any(spooled.values())
        return ok, (f"ring records pending {pending}, group lag {lag}, "
                    f"spool entries {spooled}")

    def raw_xinfo_lag(self) -> dict[str, Any]:
        """XINFO GROUPS as Redis reports it (its ``lag`` can be stale after a restart)."""
        out: dict[str, Any] = {}
        try:
            client = self.redis.client(socket_timeout=2)
            for key in self.stream_keys():
                for g in client.xinfo_groups(key):
                    name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                    out[name] = {"lag": g.get("lag"), "pending": g.get("pending"),
                                 "entries_read": g.get("entries-read")}
        except Exception as exc:
            out["error"] = repr(exc)
        return out

    def dump_shards(self, path: Path) -> None:
        """Each shard as Redis has it (XINFO STREAM FULL, entry ids), for a run that did
        not quiesce."""
        try:
            client = self.redis.client(socket_timeout=10)
            with open(path, "w") as out:
                for key in self.stream_keys():
                    full = client.xinfo_stream(key, full=True)
                    ids = [e for e, _ in client.xrange(key, count=1000)]
                    out.write(f"{key}: entry ids {ids}\n{full!r}\n\n")
            self.say(f"the shards as Redis has them: {path}")
        except Exception as exc:
            self.say(f"could not dump the shards: {exc!r}")

    def stream_keys(self) -> list[str]:
        return cluster_keys() if self.args.cluster else shard_keys()

    # -- main -----------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a = self.args
        kinds = self.kinds()
        # every kind once (in random order) when there are enough faults, then random
        first = self.rng.sample(kinds, len(kinds)) if a.faults >= len(kinds) else []
        schedule = first + [self.rng.choice(kinds) for _ in range(a.faults - len(first))]
        self.say(f"seed {a.seed}; {a.faults} faults over {a.duration}s; workdir {self.workdir}")
        self.setup()
        self.t0 = time.monotonic()
        self.say(f"{a.producers} producers at {a.rate:.0f} records/s each; sinks "
                 f"{', '.join(self.sinks)}; redis persistence "
                 f"{'off' if a.redis_no_persistence else 'appendfsync ' + a.appendfsync}")
        gap = a.duration / max(1, a.faults)
        next_at = self.rng.uniform(0.3, 1.0) * gap
        for n, kind in enumerate(schedule, 1):
            while time.monotonic() - self.t0 < next_at:
                time.sleep(0.05)
                self.sample_rings()
            try:
                self.inject(n, kind)
            except Exception as exc:
                self.say(f"fault {n} {kind} could not be injected: {exc!r}")
            next_at = max(time.monotonic() - self.t0,
                          next_at + self.rng.uniform(0.5, 1.5) * gap)
        while time.monotonic() - self.t0 < a.duration:
            time.sleep(0.1)
        load_s = time.monotonic() - self.t0
        self.say("healing everything and stopping the producers")
        self.heal()
        self.stop_flag.value = 1
        for p in self.ledger.producers.values():
            p.proc.join(60)
            if p.proc.is_alive():
                p.proc.kill()
        self.daemon.wait_up(120)
        self.pump.wait_up(120)
        quiet_since = None
        deadline = time.monotonic() + a.quiesce_timeout
        detail = ""
        while time.monotonic() < deadline:
            ok, detail = self.quiet()
            if ok:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 1.0:
                    break
            else:
                quiet_since = None
            time.sleep(0.2)
        quiescent = quiet_since is not None
        self.xinfo_lag = self.raw_xinfo_lag()
        if not quiescent:
            self.dump_shards(self.workdir / "logs" / "unquiet.txt")
        try:
            self.watch.sample_pump()
        except Exception:
            pass
        self.watch.stopping.set()
        self.say(("quiescent: " if quiescent else "NOT quiescent before the deadline: ") + detail)
        pump_rc = self.pump.stop(60)
        daemon_rc = self.daemon.stop(60)
        self.say(f"pump exited {pump_rc}, daemon exited {daemon_rc}")
        return self.account(load_s, quiescent, detail)

    def account(self, load_s: float, quiescent: bool, detail: str) -> dict[str, Any]:
        dead = self.dead_letters()
        spool_dropped = spool_drops(self.pump.log)
        reports: list[SinkReport] = []
        for sink in self.sinks:
            if sink == "file":
                counts, sent_at = self.file_deliveries()
                dedupes = False
            elif sink == "http":
                with self.http_lock:
                    counts, sent_at = collections.Counter(self.http_seen), dict(self.http_sent_at)
                dedupes = False
            else:
                counts, sent_at = self.pg_deliveries()
                dedupes = True
            rep = self.ledger.check(sink, dedupes, counts, dead.get(sink, set()), sent_at,
                                    self.faults)
            rep.spool_dropped = spool_dropped.get(sink, 0)
            rep.lost_beyond_spool_drops = max(0, rep.lost - rep.spool_dropped)
            for k, v in self.watch.spool_counters(sink).items():
                setattr(rep, k, v)
            reports.append(rep)
        dropped_full = sum(v[0] for v in self.ring_stats.values())
        dropped_oversize = sum(v[1] for v in self.ring_stats.values())
        drops_reported = sum(len(p.drops()) for p in self.ledger.producers.values())
        attempted = sum(u for u, _, _ in self.ledger.sent().values())
        by_kind = collections.Counter(f.kind for f in self.faults)
        drops_by_kind: collections.Counter[str] = collections.Counter()
        alone: dict[str, list[int]] = {}  # faults no other overlapped: [count, drops]
        for f in self.faults:
            drops_by_kind[f.kind] += f.producer_drops
            if f.kind not in LASTING:
                continue  # the others are injected one after another
            f.overlapped = [g.kind for g in self.faults if g is not f
                            and g.at <= f.at + f.held_s and g.at + g.held_s >= f.at]
            if not f.overlapped:
                a = alone.setdefault(f.kind, [0, 0])
                a[0], a[1] = a[0] + 1, a[1] + f.producer_drops
        return {
            "seed": self.args.seed,
            "faults": len(self.faults),
            "faults_by_kind": dict(by_kind),
            "producer_drops_by_fault": dict(drops_by_kind),
            "producer_drops_by_fault_alone": {k: {"faults": n, "producer_drops": d}
                                              for k, (n, d) in alone.items()},
            "max_backlog_bytes": self.args.max_backlog_bytes,
            "spool": {"max_bytes": self.args.spool_max_bytes, "overflow": self.args.overflow},
            "foreign_groups": [f.extra for f in self.faults if f.kind == "foreign_group"],
            "streams": self.watch.reports(),
            "load_s": round(load_s, 1),
            "producers_started": len(self.ledger.producers),
            "records_attempted": attempted,
            "dropped_by_policy": {"returned_false": drops_reported,
                                  "ring_full": dropped_full, "oversize": dropped_oversize},
            "redis_persistence": ("off" if self.args.redis_no_persistence
                                  else f"appendonly yes, appendfsync {self.args.appendfsync}"),
            "redis_restarts": self.redis.starts - 1,
            "redis_cluster": bool(self.args.cluster),
            "min_replicas_acked": self.args.replicas_acked,
            "http_503_answers": self.http.rejected,
            "quiescent": quiescent,
            "quiescence_detail": detail,
            "xinfo_groups_at_end": getattr(self, "xinfo_lag", {}),
            "sinks": [asdict(r) for r in reports],
            "fault_log": [asdict(f) for f in self.faults],
            "workdir": str(self.workdir),
        }

    def close(self) -> None:
        self.stop_flag.value = 1
        if getattr(self, "watch", None) is not None:
            self.watch.stopping.set()
        for timer, _ in self.later:
            timer.cancel()
        for p in self.ledger.producers.values():
            if p.proc.is_alive():
                p.proc.kill()
                p.proc.join(5)
        for svc in (getattr(self, "pump", None), getattr(self, "daemon", None)):
            if svc is not None:
                svc.stop(30)  # a kill -9 of the whole tree if it does not stop in time
                svc.close()
        if getattr(self, "redis", None) is not None:
            (self.redis.close if self.args.cluster else self.redis.kill)()
        if getattr(self, "http", None) is not None:
            self.http.stop()
        if "postgres" in self.sinks:
            self.pg_cleanup()
