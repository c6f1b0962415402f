"""``python -m bench chaos``: randomized faults with Jepsen-queue-style accounting.

Producers (``collector.Analytics`` clients, one process each) write
sequence-numbered authz records at a steady rate. The harness runs its own
``redis-server`` (append-only file, ``appendfsync always`` by default: a
write Redis acknowledged is on disk before the reply leaves, so neither a
``kill -9`` of Redis nor a crash of the machine loses it; ``everysec`` is
safe against a ``kill -9`` of Redis as well, because Redis write()s the AOF
before replying, but a machine crash can take the last second), a
``collector-daemon`` and a ``collector-pump`` with three sinks:

- ``file`` (JSON Lines; cannot deduplicate a redelivered batch),
- ``http`` (POSTs to a loopback server of this harness, which can answer 503),
- ``postgres`` (the machine's PostgreSQL, a private table; deduplicates by id;
  its outage is a table held under ``LOCK TABLE ... ACCESS EXCLUSIVE`` by the
  harness, never a stop of the server).

A scheduler injects ``--faults`` faults at random points over ``--duration``
seconds, each drawn from: ``kill -9`` of a producer (a new one continues
with a new producer id), of a flusher, of the whole daemon (restarted), of a
pump worker, of the whole pump (restarted), a Redis ``kill -9`` and restart,
an http sink outage (503) and a PostgreSQL sink outage (table locked) with
their recovery, and ``SIGSTOP``/``SIGCONT`` of the daemon.

At the end everything is healed, producers stop, the harness waits for
quiescence (every ring empty, every consumer group's lag 0), stops pump and
daemon and reports per sink: records acknowledged to producers
(``record_hit`` returned True), delivered, **lost** (acknowledged, never
delivered, not dead-lettered), **unexpected** (delivered, never sent, or
sent but dropped by policy), **duplicated** (each attributed to the fault
that preceded it), dead-lettered, and drops by policy with causes. The exit
status is 1 when anything is lost or unexpected. The seed is printed first;
``--seed`` replays the same schedule of faults (timings of the processes
themselves still vary).

``--redis-no-persistence`` runs Redis without AOF or snapshots: every Redis
restart then empties it, and the records it held that not every sink had
read are lost — Redis's own window, reported as such (the run does not fail
for it). ``appendonly yes`` with ``appendfsync always`` (or ``everysec``)
closes it.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from . import _harness as h

KINDS = (
    "producer_kill", "flusher_kill", "daemon_kill", "pump_worker_kill", "pump_kill",
    "redis_restart", "http_outage", "postgres_outage", "daemon_stop",
)
RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------
# producers


def _producer_main(producer_id: int, config_path: str, rate: float, state: Any,
                   drops_path: str, stop: Any) -> None:
    """One app process: ``record_hit`` of sequence-numbered records at ``rate``/s.

    ``stop`` is a lock-free shared flag (``RawValue``): a ``multiprocessing.Event``
    would deadlock every producer once one is killed while holding its lock.

    ``state[0]`` is the sequence number being attempted, ``state[1]`` how
    many calls have returned, ``state[2]`` 1 after a clean stop. A record is
    acknowledged when its call returned True: seq < state[1] and not listed
    in the drops file (written before state[1] moves past it).
    """
    from collector import Analytics
    from collector.demo import authz_record

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = os.open(drops_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    analytics = Analytics.from_config(config_path)
    analytics.start()
    start = time.monotonic()
    seq = 0
    try:
        while not stop.value:
            rec = authz_record(producer_id, seq)
            rec["sent_at"] = time.time()
            state[0] = seq
            if not analytics.record_hit(rec):
                os.write(fd, b"%d\n" % seq)
            seq += 1
            state[1] = seq
            if seq % 20 == 0:
                ahead = seq / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(min(ahead, 0.2))
    finally:
        analytics.stop()
        os.close(fd)
        state[2] = 1


@dataclass
class Producer:
    pid_: int
    producer_id: int
    proc: Any
    state: Any
    drops_path: Path
    started_wall: float = 0.0
    rate: float = 1.0
    killed_at: float | None = None

    def drops(self) -> set[int]:
        try:
            text = self.drops_path.read_text()
        except FileNotFoundError:
            return set()
        return {int(x) for x in text.split()}


# ---------------------------------------------------------------------------
# accounting


@dataclass
class Fault:
    n: int
    kind: str
    at: float  # seconds since the start of the load (time.time() in ``wall``)
    wall: float
    held_s: float = 0.0
    detail: str = ""


@dataclass
class SinkReport:
    sink: str
    deduplicates: bool
    acknowledged: int = 0
    delivered: int = 0  # distinct records
    deliveries: int = 0  # lines/rows/records received, duplicates included
    lost: int = 0
    unexpected: int = 0
    duplicated: int = 0
    dead_lettered: int = 0
    uncertain_delivered: int = 0  # in flight when its producer was killed, then delivered
    duplicates_by_fault: dict[str, int] = field(default_factory=dict)
    duplicates_unexplained: int = 0
    lost_by_fault: dict[str, int] = field(default_factory=dict)  # by the next fault after
    lost_sample: list[str] = field(default_factory=list)
    unexpected_sample: list[str] = field(default_factory=list)


class Ledger:
    """What producers sent; checks what each sink holds against it."""

    def __init__(self) -> None:
        self.producers: dict[int, Producer] = {}

    def sent(self) -> dict[int, tuple[int, int, set[int]]]:
        """producer id -> (attempted upper bound, calls returned, drops)."""
        out = {}
        for pid, p in self.producers.items():
            attempting, returned = int(p.state[0]), int(p.state[1])
            out[pid] = (max(attempting + 1, returned), returned, p.drops())
        return out

    def check(self, sink: str, dedupes: bool, counts: collections.Counter[tuple[int, int]],
              dead: set[tuple[int, int]], sent_at: dict[tuple[int, int], float],
              faults: list[Fault]) -> SinkReport:
        rep = SinkReport(sink, dedupes)
        sent = self.sent()
        fault_walls = sorted((f.wall, f.kind) for f in faults)
        for pid, (upper, returned, drops) in sent.items():
            acked = returned - len([d for d in drops if d < returned])
            rep.acknowledged += acked
            for seq in range(returned):
                key = (pid, seq)
                if seq in drops:
                    continue
                if key not in counts and key not in dead:
                    rep.lost += 1
                    # its send time, estimated from the producer's start and pacing
                    p = self.producers[pid]
                    t = p.started_wall + seq / p.rate
                    cause = next((k for w, k in fault_walls if w >= t - 1.0), "none")
                    rep.lost_by_fault[cause] = rep.lost_by_fault.get(cause, 0) + 1
                    if len(rep.lost_sample) < 10:
                        rep.lost_sample.append(f"producer {pid} seq {seq} (sent ~"
                                               f"{time.strftime('%H:%M:%S', time.localtime(t))}"
                                               f", next fault {cause})")
            for seq in range(returned, upper):
                if (pid, seq) in counts:
                    rep.uncertain_delivered += 1
        rep.dead_lettered = len(dead)
        for key, c in counts.items():
            rep.deliveries += c
            pid, seq = key
            info = sent.get(pid)
            if info is None or seq >= info[0] or seq < 0 or seq in info[2]:
                rep.unexpected += 1
                if len(rep.unexpected_sample) < 10:
                    why = ("unknown producer" if info is None else
                           "dropped by policy" if seq in info[2] else "never sent")
                    rep.unexpected_sample.append(f"producer {pid} seq {seq} ({why})")
                continue
            rep.delivered += 1
            if c > 1:
                rep.duplicated += c - 1
                t = sent_at.get(key, 0.0)
                cause = next((k for w, k in fault_walls if w >= t - 1.0), None)
                if cause is None:
                    rep.duplicates_unexplained += c - 1
                else:
                    rep.duplicates_by_fault[cause] = rep.duplicates_by_fault.get(cause, 0) + c - 1
        return rep


# ---------------------------------------------------------------------------
# the run


class Chaos:
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
    def _on_http(self, records: list[dict[str, Any]]) -> None:
        with self.http_lock:
            for r in records:
                if isinstance(r.get("record"), dict):  # the http sink's {"id", "record"}
                    r = r["record"]
                try:
                    key = (int(r["producer"]), int(r["seq"]))
                except (KeyError, TypeError, ValueError):
                    key = (-1, -1)
                self.http_seen[key] += 1
                self.http_sent_at.setdefault(key, float(r.get("sent_at") or 0.0))

    def setup(self) -> None:
        a = self.args
        persistence = "none" if a.redis_no_persistence else a.appendfsync
        self.redis = h.RedisProc(self.workdir / "redis", persistence=persistence).start()
        self.http = h.HttpTarget(self._on_http).start()
        self.collector_yaml, dport = h.daemon_config(
            self.workdir, self.redis.url, pool_size=2, ring_capacity_bytes=a.ring_bytes,
            full_policy="drop", redis_timeout_s=2.0, startup_redis_wait_s=120,
            shutdown_timeout_s=10)
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
        (self.workdir / "out").mkdir(exist_ok=True)
        self.pump_yaml, pport = h.pump_config(
            self.workdir, self.redis.url, pumps, read_block_s=0.2, claim_idle_ms=5000,
            max_deliveries=1000, batch_deadline_s=4, stuck_write_grace_s=2,
            retry_max_ms=1000, shutdown_timeout_s=10, redis_timeout_s=2.0)
        self.daemon = h.daemon(self.workdir, self.collector_yaml, dport).start()
        self.pump = h.pump(self.workdir, self.pump_yaml, pport).start()
        for _ in range(a.producers):
            self.start_producer()

    def start_producer(self) -> Producer:
        pid = self.next_producer_id
        self.next_producer_id += 1
        state = self.ctx.RawArray("q", [-1, 0, 0])
        drops = self.workdir / f"drops-{pid}.txt"
        proc = self.ctx.Process(
            target=_producer_main, name=f"producer-{pid}",
            args=(pid, str(self.collector_yaml), self.args.rate, state, str(drops),
                  self.stop_flag))
        proc.start()
        p = Producer(proc.pid or 0, pid, proc, state, drops, time.time(), self.args.rate)
        self.ledger.producers[pid] = p
        return p

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
            lag = h.group_lag(self.redis.client(socket_timeout=2), self.stream_keys())
        except Exception as exc:
            return False, f"redis: {exc}"
        groups_ok = all(name in lag for name in self.sinks)
        busy = {k: v for k, v in lag.items() if v}
        ok = pending == 0 and groups_ok and not busy
        return ok, f"ring records pending {pending}, group lag {lag}"

    def raw_xinfo_lag(self) -> dict[str, Any]:
        """XINFO GROUPS as Redis reports it (its ``lag`` can be stale, see _harness)."""
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

    def stream_keys(self) -> list[str]:
        from collector.common.stream import shard_keys

        return shard_keys()

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

    def inject(self, n: int, kind: str) -> Fault:
        f = Fault(n, kind, time.monotonic() - self.t0, time.time())
        rng = self.rng
        hold = round(rng.uniform(self.args.hold_min, self.args.hold_max), 2)
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
            self.daemon.kill9()
            f.detail = f"daemon down {hold}s"
            time.sleep(hold)
            self.daemon.start(wait_s=60)
        elif kind == "pump_worker_kill":
            f.detail = self._kill_one(self.pump.worker_children(), "pump worker")
        elif kind == "pump_kill":
            self.pump.kill9()
            f.detail = f"pump down {hold}s"
            time.sleep(hold)
            self.pump.start(wait_s=60)
        elif kind == "redis_restart":
            lagging = self.args.redis_no_persistence and "http" in self.sinks
            if lagging:
                # let the http sink fall behind first, so Redis holds records that
                # not every sink has read when it restarts (the window to show)
                self.http.outage(True)
                time.sleep(1.5)
            self.redis.kill()
            f.detail = f"redis kill -9, down {hold}s"
            time.sleep(hold)
            self.redis.start()
            self.redis.restarts += 1
            if lagging:
                self.http.outage(False)
                f.detail += " (http sink answering 503 for 1.5 s before, until it was back)"
        elif kind == "http_outage":
            self.http.outage(True)
            f.detail = f"http sink answers 503 for {hold}s"
            time.sleep(hold)
            self.http.outage(False)
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
        f.held_s = round(time.monotonic() - self.t0 - f.at, 2)
        self.faults.append(f)
        self.say(f"fault {n:>3} {kind:<17} {f.detail}")
        return f

    def flushers(self) -> list[psutil.Process]:
        """The daemon's flusher processes, as its /readyz lists them."""
        _code, body = self.daemon.get("readyz")
        pids: set[int] = set()
        try:
            pids = {int(f["pid"]) for f in json.loads(body).get("flushers", []) if f.get("pid")}
        except (ValueError, TypeError, AttributeError):
            pass
        kids = self.daemon.worker_children()
        return [k for k in kids if k.pid in pids] if pids else kids

    def _pg_lock(self, hold: float) -> str:
        import psycopg

        try:
            with psycopg.connect(self.args.pg_dsn, connect_timeout=5) as conn:
                conn.execute("SET lock_timeout = '5s'")
                conn.execute(f"LOCK TABLE {self.pg_table} IN ACCESS EXCLUSIVE MODE")
                time.sleep(hold)
                conn.rollback()
            return f"postgres table {self.pg_table} locked for {hold}s"
        except psycopg.Error as exc:
            return f"could not lock the table ({exc.__class__.__name__}: {exc})"

    def kinds(self) -> list[str]:
        kinds = [k for k in KINDS if self.args.kinds is None or k in self.args.kinds]
        if "http" not in self.sinks:
            kinds = [k for k in kinds if k != "http_outage"]
        if "postgres" not in self.sinks:
            kinds = [k for k in kinds if k != "postgres_outage"]
        return kinds

    # -- healing and reading back ----------------------------------------------
    def heal(self) -> None:
        self.http.outage(False)
        if self.daemon.pid is not None:
            try:
                os.killpg(self.daemon.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        if not self.daemon.alive():
            self.daemon.start(wait_s=0)
        if not self.pump.alive():
            self.pump.start(wait_s=0)

    def file_deliveries(self) -> tuple[collections.Counter[tuple[int, int]],
                                       dict[tuple[int, int], float]]:
        counts: collections.Counter[tuple[int, int]] = collections.Counter()
        sent_at: dict[tuple[int, int], float] = {}
        out = self.workdir / "out"
        for path in sorted(out.rglob("*")):
            if not path.is_file():
                continue
            with open(path, "rb") as fh:
                for line in fh:
                    try:
                        r = json.loads(line)
                        key = (int(r["producer"]), int(r["seq"]))
                    except (ValueError, KeyError, TypeError):
                        key = (-1, -1)
                        r = {}
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
            for _eid, fields in client.xrange(name):
                try:
                    entry = decode_entry(fields)
                except Exception:
                    continue
                for raw in entry.records:
                    try:
                        rec = msgpack.unpackb(raw)
                        out[sink].add((int(rec["producer"]), int(rec["seq"])))
                    except Exception:
                        continue
        return out

    def pg_cleanup(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.args.pg_dsn, connect_timeout=5, autocommit=True) as c:
                c.execute(f"DROP TABLE IF EXISTS {self.pg_table}")
        except psycopg.Error:
            pass

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
        self.daemon.wait_ready(120)
        self.pump.wait_ready(120)
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
        self.say(("quiescent: " if quiescent else "NOT quiescent before the deadline: ") + detail)
        pump_rc = self.pump.stop(60)
        daemon_rc = self.daemon.stop(60)
        self.say(f"pump exited {pump_rc}, daemon exited {daemon_rc}")
        return self.account(load_s, quiescent, detail)

    def account(self, load_s: float, quiescent: bool, detail: str) -> dict[str, Any]:
        dead = self.dead_letters()
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
            reports.append(self.ledger.check(sink, dedupes, counts, dead.get(sink, set()),
                                             sent_at, self.faults))
        dropped_full = sum(v[0] for v in self.ring_stats.values())
        dropped_oversize = sum(v[1] for v in self.ring_stats.values())
        drops_reported = sum(len(p.drops()) for p in self.ledger.producers.values())
        attempted = sum(u for u, _, _ in self.ledger.sent().values())
        by_kind = collections.Counter(f.kind for f in self.faults)
        return {
            "seed": self.args.seed,
            "faults": len(self.faults),
            "faults_by_kind": dict(by_kind),
            "load_s": round(load_s, 1),
            "producers_started": len(self.ledger.producers),
            "records_attempted": attempted,
            "dropped_by_policy": {"returned_false": drops_reported,
                                  "ring_full": dropped_full, "oversize": dropped_oversize},
            "redis_persistence": ("off" if self.args.redis_no_persistence
                                  else f"appendonly yes, appendfsync {self.args.appendfsync}"),
            "redis_restarts": self.redis.restarts,
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
        for p in self.ledger.producers.values():
            if p.proc.is_alive():
                p.proc.kill()
                p.proc.join(5)
        for svc in (getattr(self, "pump", None), getattr(self, "daemon", None)):
            if svc is not None:
                try:
                    svc.stop(30)
                except Exception:
                    if svc.pid:
                        h.kill_tree(svc.pid)
        if getattr(self, "redis", None) is not None:
            self.redis.kill()
        if getattr(self, "http", None) is not None:
            self.http.stop()
        if "postgres" in self.sinks:
            self.pg_cleanup()


def print_report(rep: dict[str, Any], *, no_persistence: bool) -> None:
    print(f"\nchaos: seed {rep['seed']}: {rep['faults']} faults in {rep['load_s']}s "
          f"({', '.join(f'{k} {v}' for k, v in sorted(rep['faults_by_kind'].items()))})")
    print(f"chaos: {rep['producers_started']} producer processes, "
          f"{rep['records_attempted']:,} records attempted; Redis {rep['redis_persistence']}, "
          f"{rep['redis_restarts']} restarts; quiescent: {rep['quiescent']}")
    d = rep["dropped_by_policy"]
    print(f"chaos: dropped by policy: {d['returned_false']:,} record_hit calls returned False "
          f"(rings counted {d['ring_full']:,} ring full, {d['oversize']:,} oversize)")
    hdr = (f"{'sink':<9}{'dedup':>6}{'acked':>10}{'delivered':>10}{'lost':>7}"
           f"{'unexpect':>9}{'dups':>7}{'dead':>6}{'inflight':>9}  duplicates by fault")
    print(hdr)
    for s in rep["sinks"]:
        causes = ", ".join(f"{k} {v}" for k, v in sorted(s["duplicates_by_fault"].items()))
        if s["duplicates_unexplained"]:
            causes += f", UNEXPLAINED {s['duplicates_unexplained']}"
        print(f"{s['sink']:<9}{'yes' if s['deduplicates'] else 'no':>6}{s['acknowledged']:>10,}"
              f"{s['delivered']:>10,}{s['lost']:>7,}{s['unexpected']:>9,}{s['duplicated']:>7,}"
              f"{s['dead_lettered']:>6,}{s['uncertain_delivered']:>9,}  {causes or '-'}")
        if s["lost"]:
            print("    lost, by the first fault after the record was sent: " + ", ".join(
                f"{k} {v}" for k, v in sorted(s["lost_by_fault"].items())))
        for x in s["lost_sample"][:5]:
            print(f"    lost: {x}")
        for x in s["unexpected_sample"][:5]:
            print(f"    unexpected: {x}")
    if no_persistence:
        print("chaos: Redis ran without persistence: records Redis held when it restarted "
              "are lost (Redis's own window); appendonly yes + appendfsync always|everysec "
              "closes it.")


def verdict(rep: dict[str, Any], *, no_persistence: bool) -> int:
    bad = any(s["unexpected"] for s in rep["sinks"])
    if not no_persistence:
        bad = bad or any(s["lost"] for s in rep["sinks"])
    return 1 if bad else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench chaos",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--faults", type=int, default=100, help="faults to inject (default 100)")
    ap.add_argument("--duration", type=float, default=300.0,
                    help="seconds of load while faults are injected (default 300)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    ap.add_argument("--producers", type=int, default=3, help="producer processes (default 3)")
    ap.add_argument("--rate", type=float, default=500.0,
                    help="records/s per producer (default 500)")
    ap.add_argument("--sinks", default="file,http,postgres",
                    help="comma-separated subset of file,http,postgres (default all)")
    ap.add_argument("--kinds", type=lambda s: [k for k in s.split(",") if k], default=None,
                    help=f"fault kinds to draw from (default all: {','.join(KINDS)})")
    ap.add_argument("--appendfsync", choices=("always", "everysec"), default="always",
                    help="Redis AOF fsync policy (default always)")
    ap.add_argument("--redis-no-persistence", action="store_true",
                    help="run Redis without AOF/snapshots and report what a restart loses")
    ap.add_argument("--ring-bytes", type=int, default=2 * 1024 * 1024,
                    help="ring capacity per producer (power of two, default 2 MiB)")
    ap.add_argument("--hold-min", type=float, default=0.5, help="shortest outage (s)")
    ap.add_argument("--hold-max", type=float, default=3.0, help="longest outage (s)")
    ap.add_argument("--quiesce-timeout", type=float, default=180.0,
                    help="seconds to wait for empty rings and zero lag at the end")
    ap.add_argument("--pg-dsn", default=os.environ.get("COLLECTOR_TEST_PG_DSN",
                                                       "dbname=collector_test"))
    ap.add_argument("--workdir", default=None, help="keep files here (default a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--json", default=None, help="write the report here "
                    "(default bench/results/chaos-<date>.json)")
    ap.add_argument("--quiet", action="store_true", help="print only the report")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    bad = set(args.kinds or ()) - set(KINDS)
    if bad:
        ap.error(f"--kinds: unknown kind(s) {sorted(bad)}; known: {', '.join(KINDS)}")
    bad = set(args.sinks.split(",")) - {"file", "http", "postgres"}
    if bad:
        ap.error(f"--sinks: unknown sink(s) {sorted(bad)}; known: file, http, postgres")
    return args


def run(argv: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    """Run chaos; return (exit status, report)."""
    args = parse_args(argv)
    print(f"chaos: seed {args.seed} (replay with --seed {args.seed})", flush=True)
    chaos = Chaos(args)

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(f"chaos: stopped by signal {signum}")

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        rep = chaos.run()
    finally:
        chaos.close()
        signal.signal(signal.SIGTERM, old)
    print_report(rep, no_persistence=args.redis_no_persistence)
    out = Path(args.json) if args.json else RESULTS / time.strftime("chaos-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2))
    print(f"chaos: report written to {out}")
    status = verdict(rep, no_persistence=args.redis_no_persistence)
    if status == 0 and not args.keep and args.workdir is None:
        shutil.rmtree(chaos.workdir, ignore_errors=True)
    elif status:
        print(f"chaos: FAILED; files kept in {chaos.workdir} (logs/ has daemon and pump logs)")
    return status, rep


def main(argv: list[str] | None = None) -> int:
    return run(argv)[0]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
