"""``collector status``: one picture of rings, flushers, Redis and sinks, as a dict.

:func:`gather` returns the document ``collector status --json`` prints; its
schema is in the README ("collector status --json") and checked by
``tests/test_ops_status.py``. The verdict: ``unreachable`` (exit 2) when the
daemon's or the pump's endpoint or Redis does not answer, ``degraded``
(exit 1) when any of them answers but something is not ready (a service's
``/readyz`` 503, a sink not ready, a stream shard at its backlog budget),
else ``ready`` (exit 0). ``warnings`` (``appendonly`` off, records dropped
at producers, dead letters waiting) do not change the exit code.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

import ringbuf
from collector.common.redact import redact_dsn
from collector.common.redisconn import connect_from_config
from collector.config import CollectorConfig
from pump._deadletter import dead_letter_key
from pump._redis import group_info, group_lag
from pump.config import PumpConfig
from ringbuf._native import why_pure

from ._sources import Endpoint, Metrics, Unreachable, entry_ms, fetch_endpoint, fetch_metrics

__all__ = ["EXIT", "SCHEMA_VERSION", "gather", "rates"]

SCHEMA_VERSION = 1
EXIT = {"ready": 0, "degraded": 1, "unreachable": 2}
_LAG_SCAN_ENTRIES = 1000  # lag_records is counted exactly up to this many undelivered entries

D = "collector_daemon_"
P = "collector_pump_"


def _rings(rings_dir: str) -> dict[str, Any]:
    # The ring header does not record the path its producer writes with: what this
    # install takes is said, and a ring with checksums is always written by pure Python.
    out: dict[str, Any] = {"dir": rings_dir, "error": None, "local_path": ringbuf.ring_path(),
                           "local_path_why": why_pure(), "rings": []}
    try:
        names = sorted(os.listdir(rings_dir))
    except OSError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    for name in names:
        if not ringbuf.is_ring_name(name):
            continue
        path = os.path.join(rings_dir, name)
        try:
            with ringbuf.RingProbe.open(path) as probe:
                s, checksum = probe.stats(), probe.header.checksum
        except (OSError, ringbuf.RingError) as exc:
            out["rings"].append({"path": path, "error": f"{type(exc).__name__}: {exc}"})
            continue
        out["rings"].append({
            "ring_id": s.ring_id, "path": path, "producer_pid": s.producer_pid,
            "producer_alive": s.producer_alive, "closed": s.closed,
            "fill_ratio": round(s.fill_ratio, 6), "bytes_used": s.bytes_used,
            "capacity_bytes": s.capacity, "written": s.written, "committed": s.committed,
            "pending": s.pending, "dropped_full": s.dropped_full,
            "dropped_oversize": s.dropped_oversize, "checksum": checksum,
            "age_s": round(max(0.0, time.time() - s.created_at), 3),
            "error": None,
        })
    return out


def _label_set(m: Metrics, name: str, label: str) -> str | None:
    """The ``label`` of the sample of ``name`` that is 1 (an info-style gauge), or None."""
    on = [value for value, v in m.by_label(name, label).items() if v == 1.0]
    return on[0] if len(on) == 1 else None


def _daemon(ep: Endpoint) -> dict[str, Any]:
    m = ep.metrics
    flushers = []
    for f in ep.detail.get("flushers", []):
        flushers.append({**f, "backing_off": bool(f.get("alive")) and not f.get("redis_ok")})
    return {
        "address": ep.address, "reachable": ep.reachable, "ready": ep.ready, "error": ep.error,
        "status": ep.detail.get("status"),
        "ring_path": _label_set(m, D + "ring_path", "path"),
        "records_read": m.get(D + "records_read_total"),
        "records_written": m.get(D + "records_written_total"),
        "batches_written": m.get(D + "batches_written_total"),
        "redis_errors": m.get(D + "redis_errors_total"),
        "backpressure": m.get(D + "backpressure_total"),
        "dropped": {"full": m.get(D + "dropped_records_total", cause="full"),
                    "oversize": m.get(D + "dropped_records_total", cause="oversize")},
        "flushers_alive": m.get(D + "flushers_alive"), "flushers_configured": m.get(D + "flushers"),
        "flusher_restarts": m.get(D + "flusher_restarts_total"),
        "flushers": flushers,
        "rates": None,
    }


def _persistence(r: redis.Redis) -> dict[str, Any]:
    info = r.info("persistence")
    out: dict[str, Any] = {
        "appendonly": bool(int(info.get("aof_enabled", 0))),
        "appendfsync": None,
        "aof_last_write_ok": str(info.get("aof_last_write_status", "ok")) == "ok",
        "rdb_changes_since_last_save": int(info.get("rdb_changes_since_last_save", 0)),
        "rdb_last_save_age_s": (round(time.time() - int(info["rdb_last_save_time"]), 1)
                                if info.get("rdb_last_save_time") else None),
    }
    try:  # CONFIG may be refused by an ACL or renamed: then it stays unknown
        got = r.config_get("appendfsync")
        out["appendfsync"] = got.get("appendfsync")
    except redis.RedisError:
        pass
    return out


def _redis(r: redis.Redis, daemon_cfg: CollectorConfig) -> dict[str, Any]:
    mem = r.info("memory")
    budget_bytes = daemon_cfg.max_backlog_bytes // daemon_cfg.stream_shards  # per shard
    budget_entries = daemon_cfg.max_backlog_entries  # deprecated; None when off
    streams = []
    for key in daemon_cfg.shard_keys():
        entries = int(r.xlen(key))
        size = r.memory_usage(key) if entries else 0
        streams.append({"key": key, "entries": entries, "bytes": int(size or 0),
                        "budget_entries": budget_entries,
                        "budget_bytes": budget_bytes,
                        "over_budget": (budget_entries is not None and entries >= budget_entries)
                        or (size or 0) >= budget_bytes})
    return {
        "used_memory_bytes": int(mem.get("used_memory", 0)),
        "maxmemory_bytes": int(mem.get("maxmemory", 0)) or None,
        "persistence": _persistence(r),
        "streams": streams,
    }


def _group(r: redis.Redis, key: str, sink: str, now_ms: int) -> dict[str, Any]:
    """Lag, pending and the oldest unacknowledged entry of ``sink``'s group on ``key``."""
    lag, pending = group_lag(r, key, sink)
    row: dict[str, Any] = {"stream": key, "lag_entries": lag, "lag_records": None,
                           "pending_entries": pending, "oldest_age_s": None}
    last = "0-0"
    for g in group_info(r, key):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == sink:
            got = g.get("last-delivered-id") or "0-0"
            last = got.decode() if isinstance(got, bytes) else str(got)
    undelivered = r.xrange(key, min=f"({last}" if last != "0-0" else "-", max="+",
                           count=_LAG_SCAN_ENTRIES + 1) if lag else []
    if len(undelivered) <= _LAG_SCAN_ENTRIES:  # else too long to count: None
        row["lag_records"] = sum(int(f.get(b"n", b"0") or 0) for _, f in undelivered)
    oldest = None
    if pending:
        summary = r.xpending(key, sink)
        oldest = summary.get("min") if isinstance(summary, dict) else None
    if oldest is None and undelivered:
        oldest = undelivered[0][0]
    if oldest is not None:
        row["oldest_age_s"] = round(max(0, now_ms - entry_ms(oldest)) / 1000, 3)
    return row


def _sinks(pump: Endpoint, r: redis.Redis | None, cfg: PumpConfig) -> dict[str, Any]:
    m = pump.metrics
    out: dict[str, Any] = {}
    now_ms = int(time.time() * 1000)
    ready_detail = pump.detail.get("sinks", {})
    spool = m.by_label(P + "spool_bytes", "sink")  # empty from a pump without a spool
    for sink, spec in cfg.pumps.items():
        d = ready_detail.get(sink, {})
        why = [*d.get("outage", [])]
        if d.get("error") and d["error"] not in why:
            why.append(d["error"])
        for key, lag in (d.get("lag") or {}).items():
            if "over_limit" in lag:
                why.append(f"{key}: lag over max_lag_entries ({lag['over_limit']})")
        if d and d.get("workers_alive", 0) < d.get("workers", spec.workers):
            why.append(f"{d.get('workers_alive', 0)} of {spec.workers} workers alive")
        if d.get("lag_error"):
            why.append(f"lag: {d['lag_error']}")
        info: dict[str, Any] = {
            "type": cfg.sink_type(sink), "ready": d.get("ready") if d else None,
            "why": why, "workers": spec.workers, "workers_alive": d.get("workers_alive"),
            "workers_in_outage": d.get("workers_in_outage"),
            "delivered": m.get(P + "records_out_total", sink=sink),
            "records_in": m.get(P + "records_in_total", sink=sink),
            "filtered": m.get(P + "records_filtered_total", sink=sink),
            "retries": m.get(P + "write_retries_total", sink=sink),
            "write_errors": m.get(P + "write_errors_total", sink=sink),
            "dead_lettered": m.get(P + "records_dead_lettered_total", sink=sink),
            "dead_letters": None, "lag_entries": None, "lag_records": None,
            "pending_entries": None, "oldest_age_s": None,
            "spool_bytes": spool.get(sink) if spool.get(sink) is None else int(spool[sink]),
            "delivered_per_s": None, "streams": [],
        }
        if r is not None:
            rows = [_group(r, key, sink, now_ms) for key in cfg.shard_keys()]
            info["streams"] = rows
            info["lag_entries"] = sum(x["lag_entries"] for x in rows)
            lr = [x["lag_records"] for x in rows]
            info["lag_records"] = None if None in lr else sum(lr)  # type: ignore[arg-type]
            info["pending_entries"] = sum(x["pending_entries"] for x in rows)
            ages = [x["oldest_age_s"] for x in rows if x["oldest_age_s"] is not None]
            info["oldest_age_s"] = max(ages) if ages else None
            info["dead_letters"] = sum(int(r.xlen(dead_letter_key(k, sink)))
                                       for k in cfg.shard_keys())
        out[sink] = info
    return out


def gather(daemon_cfg: CollectorConfig, pump_cfg: PumpConfig, *,
           timeout_s: float = 3.0) -> dict[str, Any]:
    """The status document (see the module docstring and the README's schema)."""
    t0 = time.time()
    daemon = fetch_endpoint(daemon_cfg.health_address, timeout_s)
    pump = fetch_endpoint(pump_cfg.health_address, timeout_s)
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "time": round(t0, 3),
        "verdict": None, "exit_code": None, "problems": [], "warnings": [],
        "rings": _rings(daemon_cfg.rings_dir),
        "daemon": _daemon(daemon),
        "redis": {"url": redact_dsn(pump_cfg.effective_redis_url()), "reachable": False,
                  "error": None},
        "pump": {"address": pump.address, "reachable": pump.reachable, "ready": pump.ready,
                 "error": pump.error, "sinks": {}},
    }
    r: redis.Redis | None = connect_from_config(pump_cfg, timeout_s=timeout_s)
    try:
        assert r is not None
        doc["redis"].update(_redis(r, daemon_cfg))
        doc["redis"]["reachable"] = True
    except (redis.RedisError, OSError) as exc:
        doc["redis"]["error"] = f"{type(exc).__name__}: {exc}"
        r = None
    try:
        doc["pump"]["sinks"] = _sinks(pump, r, pump_cfg)
    except (redis.RedisError, OSError) as exc:
        doc["redis"]["reachable"] = False
        doc["redis"]["error"] = f"{type(exc).__name__}: {exc}"
        doc["pump"]["sinks"] = _sinks(pump, None, pump_cfg)
    finally:
        if r is not None:
            r.close()
    _verdict(doc)
    return doc


def _verdict(doc: dict[str, Any]) -> None:
    problems, warnings = doc["problems"], doc["warnings"]
    unreachable = False
    for name, part in (("daemon", doc["daemon"]), ("pump", doc["pump"])):
        if not part["reachable"]:
            unreachable = True
            problems.append(f"{name}: unreachable ({part['error']})")
        elif not part["ready"]:
            problems.append(f"{name}: not ready")
    red = doc["redis"]
    if not red["reachable"]:
        unreachable = True
        problems.append(f"redis: unreachable ({red['error']})")
    else:
        if not red["persistence"]["appendonly"]:
            warnings.append("redis: appendonly is off: a Redis restart loses what the pump "
                            "has not acknowledged")
        for s in red["streams"]:
            if s["over_budget"]:
                problems.append(f"redis: {s['key']} is at its backlog budget "
                                f"({s['entries']} of {s['budget_entries']} entries): the "
                                "daemon keeps records in the rings")
    for f in doc["daemon"]["flushers"]:
        if not f.get("alive") or f.get("stalled") or not f.get("redis_ok"):
            state = ("dead" if not f.get("alive") else "stalled" if f.get("stalled")
                     else "backing off (Redis failed)")
            problems.append(f"daemon: flusher {f.get('slot')} {state}")
    for sink, s in doc["pump"]["sinks"].items():
        if s["ready"] is False:
            problems.append(f"sink {sink}: not ready: {'; '.join(s['why']) or 'see /readyz'}")
        if s["dead_letters"]:
            warnings.append(f"sink {sink}: {s['dead_letters']} dead letters "
                            f"(collector dead-letters list --sink {sink})")
    dropped = doc["daemon"]["dropped"]
    if dropped["full"] or dropped["oversize"]:
        warnings.append(f"producers dropped {int(dropped['full'])} records for a full ring and "
                        f"{int(dropped['oversize'])} oversize")
    if doc["rings"]["error"]:
        warnings.append(f"rings: cannot read {doc['rings']['dir']}: {doc['rings']['error']}")
    verdict = "unreachable" if unreachable else "degraded" if problems else "ready"
    doc["verdict"] = verdict
    doc["exit_code"] = EXIT[verdict]


def rates(doc: dict[str, Any], daemon_cfg: CollectorConfig, pump_cfg: PumpConfig,
          interval_s: float, *, timeout_s: float = 3.0) -> None:
    """Fill the per-second rates by scraping both ``/metrics`` again after ``interval_s``.

    (``collector top`` computes them between its refreshes instead.)
    """
    time.sleep(interval_s)  # the rate's own interval, not a wait for a condition
    try:
        dm = fetch_metrics(daemon_cfg.health_address, timeout_s)
    except Unreachable:
        dm = None
    try:
        pm = fetch_metrics(pump_cfg.health_address, timeout_s)
    except Unreachable:
        pm = None
    apply_rates(doc, dm, pm, interval_s)


def apply_rates(doc: dict[str, Any], dm: Metrics | None, pm: Metrics | None,
                interval_s: float) -> None:
    """Rates from ``doc``'s counters to the later scrapes ``dm`` and ``pm``."""
    d = doc["daemon"]
    if dm is not None and d["reachable"]:
        d["rates"] = {
            "records_per_s": round((dm.get(D + "records_written_total")
                                    - d["records_written"]) / interval_s, 1),
            "batches_per_s": round((dm.get(D + "batches_written_total")
                                    - d["batches_written"]) / interval_s, 2),
            "interval_s": interval_s}
    if pm is not None and doc["pump"]["reachable"]:
        for sink, s in doc["pump"]["sinks"].items():
            s["delivered_per_s"] = round(
                (pm.get(P + "records_out_total", sink=sink) - s["delivered"]) / interval_s, 1)
