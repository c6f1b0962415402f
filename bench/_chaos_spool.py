"""``bench chaos``: the faults aimed at the per-sink spool, a hung sink and a foreign group.

``hung_sink``: the http sink's target accepts every connection and answers
nothing (:class:`collector.testing.HttpPeer` mode ``stall``) for a hold drawn
from ``--hung-min``..``--hung-max``; the fault returns at once and the target
recovers on a timer, so other faults land while that sink spools (a pump
``kill -9`` while it moves entries into its spool or feeds from it). File
and PostgreSQL go on meanwhile. An ``http_outage`` (503) during a hang
leaves it hung: a target that never answers wins over one that refuses.

``foreign_group``: consumer groups no configured sink owns appear on every
shard, ``XGROUP CREATE <shard> <name> $``, one more at ``0`` that never
reads, and one at ``0`` that reads a few entries and never acknowledges
them (a consumer that died), for a hold drawn from
``--foreign-min``..``--foreign-max``; then they are destroyed. While they
exist the :class:`Watch` thread samples each shard's ``XLEN`` and
``MEMORY USAGE``; at the end of the group's life the report says how many
entries were trimmed meanwhile and whether the stream's first entry moved
past where the groups stood (trimming went on without them).

The watch also reads the pump's ``/metrics`` every second (records spooled
and dropped from a full spool per sink; a counter that goes down is a pump
restarted) and :func:`spool_drops` counts, exactly, the records the pump
logged as dropped from a full spool (``overflow: drop_oldest``): those,
and only those, may be missing at that sink.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.testing import HttpPeer

_DROP = re.compile(r"dropped its oldest records.*?(?:^|\s)sink=(\S+)|"
                   r"(?:^|\s)sink=(\S+).*?dropped its oldest records")
_N = re.compile(r"(?:^|\s)dropped_records=(\d+)")


class HttpTarget:
    """The http target's mode under two faults that may overlap: hung (stall) over 503."""

    def __init__(self, http: HttpPeer) -> None:
        self.http = http
        self.lock = threading.Lock()
        self.hung = 0
        self.refusing = 0

    def _apply(self) -> None:
        if self.hung:
            self.http.mode = "stall"
        else:
            self.http.mode = "503" if self.refusing else "ok"
            self.http.release.set()  # stalled requests answer (503) now

    def hang(self) -> None:
        with self.lock:
            if not self.hung:
                self.http.release.clear()
            self.hung += 1
            self._apply()

    def unhang(self) -> None:
        with self.lock:
            self.hung = max(0, self.hung - 1)
            self._apply()

    def refuse(self, on: bool) -> None:
        with self.lock:
            self.refusing = max(0, self.refusing + (1 if on else -1))
            self._apply()

    def heal(self) -> None:
        with self.lock:
            self.hung = self.refusing = 0
            self._apply()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _eid(v: Any) -> tuple[int, int]:
    ms, _, seq = _s(v).partition("-")
    return int(ms), int(seq or 0)


@dataclass
class ForeignLife:
    """One foreign_group fault: its groups, and the shards while they existed."""

    n: int
    groups: list[str]
    created: float  # monotonic
    budget_bytes: int  # per shard
    drops_at_start: int = 0
    ended: float | None = None
    at: dict[str, tuple[int, int]] = field(default_factory=dict)  # shard -> last id at create
    added0: dict[str, int] = field(default_factory=dict)
    len0: dict[str, int] = field(default_factory=dict)
    max_xlen: int = 0
    max_bytes: int = 0
    samples: int = 0

    def report(self, trimmed: int, passed: bool, drops: int) -> dict[str, Any]:
        return {"fault": self.n, "groups": self.groups,
                "lived_s": round((self.ended or time.monotonic()) - self.created, 2),
                "max_xlen": self.max_xlen, "max_bytes": self.max_bytes,
                "budget_bytes_per_shard": self.budget_bytes,
                "max_bytes_of_budget": round(self.max_bytes / self.budget_bytes, 3),
                "entries_trimmed": trimmed, "trimmed_past_the_groups": passed,
                "samples": self.samples, "producer_drops": drops}


class Watch(threading.Thread):
    """Samples the shards (XLEN, MEMORY USAGE) and the pump's spool counters."""

    def __init__(self, client: Callable[[], Any], keys: list[str],
                 pump_metrics: Callable[[], dict[str, float]], sinks: list[str],
                 trace: Path | None = None) -> None:
        super().__init__(name="chaos-watch", daemon=True)
        # one line per shard and sample: wall time, XLEN, MEMORY USAGE, each group's
        # lag/pending as XINFO GROUPS says
        self.trace = open(trace, "a", buffering=1) if trace is not None else None
        self.client_factory = client
        self.keys = keys
        self.pump_metrics = pump_metrics
        self.sinks = sinks
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.lives: list[ForeignLife] = []
        self.max_bytes_without = 0  # the largest shard while no foreign group existed
        self.max_xlen_without = 0
        # per sink: counters summed over pump lifetimes (a drop = a restart)
        self._last: dict[str, float] = {}
        self.totals: dict[str, float] = {}
        self._r: Any = None

    def client(self) -> Any:
        if self._r is None:
            self._r = self.client_factory()
        return self._r

    def run(self) -> None:
        tick = 0
        while not self.stopping.wait(0.2):
            tick += 1
            try:
                self.sample_shards()
            except Exception:
                self._r = None  # Redis restarting, or a cluster failover
            if tick % 5 == 0:
                try:
                    self.sample_pump()
                except Exception:
                    pass

    def sample_shards(self) -> None:
        r = self.client()
        sizes = []
        for key in self.keys:
            pipe = r.pipeline(transaction=False)
            pipe.xlen(key)
            pipe.memory_usage(key, samples=0)
            pipe.xinfo_groups(key)
            length, usage, groups = pipe.execute()
            sizes.append((int(length or 0), int(usage or 0)))
            if self.trace is not None:
                lags = " ".join(f"{_s(g['name'])}={g.get('lag')}/{g.get('pending')}"
                                for g in groups)
                self.trace.write(f"{time.time():.2f} {key} xlen={length} bytes={usage} "
                                 f"{lags}\n")
        xlen, size = max(s[0] for s in sizes), max(s[1] for s in sizes)
        with self.lock:
            live = [f for f in self.lives if f.ended is None]
            for f in live:
                f.max_xlen, f.max_bytes = max(f.max_xlen, xlen), max(f.max_bytes, size)
                f.samples += 1
            if not live:
                self.max_xlen_without = max(self.max_xlen_without, xlen)
                self.max_bytes_without = max(self.max_bytes_without, size)

    def sample_pump(self) -> None:
        m = self.pump_metrics()
        for sink in self.sinks:
            for name in ("records_spooled_total", "spool_dropped_records_total"):
                k = f"{sink}:{name}"
                v = m.get(f'collector_pump_{name}{{sink="{sink}"}}', 0.0)
                last = self._last.get(k, 0.0)
                self.totals[k] = self.totals.get(k, 0.0) + (v - last if v >= last else v)
                self._last[k] = v

    def spool_counters(self, sink: str) -> dict[str, int]:
        """Seen in /metrics, summed over pump restarts (a kill -9 can hide the last)."""
        return {"records_spooled_seen": int(self.totals.get(f"{sink}:records_spooled_total", 0)),
                "spool_dropped_seen": int(self.totals.get(
                    f"{sink}:spool_dropped_records_total", 0))}

    # -- foreign groups ---------------------------------------------------------
    def create_foreign(self, n: int, budget_per_shard: int, drops: int) -> ForeignLife:
        r = self.client_factory()
        base = f"chaos_foreign_{n}"
        groups = [base, f"{base}_at0", f"{base}_pending"]
        life = ForeignLife(n, groups, time.monotonic(), budget_per_shard, drops)
        for key in self.keys:
            info = _stream_info(r, key)
            life.added0[key] = int(info.get("entries-added") or 0)
            life.len0[key] = int(info.get("length") or 0)
            r.xgroup_create(key, base, id="$", mkstream=True)
            last = next(_s(g["last-delivered-id"]) for g in r.xinfo_groups(key)
                        if _s(g["name"]) == base)
            life.at[key] = _eid(last)
            r.xgroup_create(key, f"{base}_at0", id="0")
            r.xgroup_create(key, f"{base}_pending", id="0")
            r.xreadgroup(f"{base}_pending", "dead-consumer", {key: ">"}, count=5)
        with self.lock:
            self.lives.append(life)
        return life

    def destroy_foreign(self, life: ForeignLife, drops: int) -> dict[str, Any]:
        """Destroy the groups; what the shards did meanwhile."""
        r = self.client_factory()
        trimmed, passed = 0, True
        for key in self.keys:
            info = _stream_info(r, key)
            added = int(info.get("entries-added") or 0)
            length = int(info.get("length") or 0)
            trimmed += (added - life.added0.get(key, 0)) - (length - life.len0.get(key, 0))
            first = info.get("first-entry")
            # trimming went on past the groups: the oldest entry left is newer than
            # the last one when the "$" group was made (or the stream is empty)
            passed = passed and (not first or _eid(first[0]) > life.at.get(key, (0, 0)))
            for g in life.groups:
                r.xgroup_destroy(key, g)
        with self.lock:
            life.ended = time.monotonic()
        return life.report(trimmed, passed, drops - life.drops_at_start)

    def reports(self) -> dict[str, Any]:
        with self.lock:
            lives = list(self.lives)
        return {"max_xlen_without_foreign": self.max_xlen_without,
                "max_bytes_without_foreign": self.max_bytes_without,
                "open_at_end": [f.n for f in lives if f.ended is None]}


def _stream_info(r: Any, key: str) -> dict[str, Any]:
    """XINFO STREAM, or {} when the stream does not exist (a Redis without persistence,
    restarted)."""
    import redis

    try:
        return dict(r.xinfo_stream(key))
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return {}
        raise


def spool_drops(log: Path) -> dict[str, int]:
    """Per sink, the records the pump logged as dropped from a full spool."""
    out: dict[str, int] = {}
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        if "dropped its oldest records" not in line:
            continue
        m, n = _DROP.search(line), _N.search(line)
        if m and n:
            sink = m.group(1) or m.group(2)
            out[sink] = out.get(sink, 0) + int(n.group(1))
    return out
