"""The daemon's metrics: the flushers' shared counters, the collector, the HTTP server.

Each flusher slot owns one :data:`FLUSHER_COUNTERS` slot (shared memory,
``collector/common/counters.py``), written by that flusher only and read
here for ``/metrics`` and by the supervisor for ``/readyz``. A restarted
flusher keeps its slot, so counters never go back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from collector.common.counters import Layout
from collector.common.health import HealthServer
from collector.common.log import get_logger
from ringbuf import ring_path

log = get_logger(__name__)

if TYPE_CHECKING:
    from ._supervisor import Supervisor

P = "collector_daemon_"

FLUSHER_COUNTERS = Layout(
    counters={
        "records_read": "Records read from rings.",
        "records_written": "Records Redis accepted (then committed in the ring).",
        "batches_written": "Stream entries (batches) Redis accepted.",
        "written_bytes": "Record payload bytes Redis accepted.",
        "redis_errors": "Failed Redis round trips (retried later).",
        "replica_ack_failures": "Batches fewer than min_replicas_acked replicas acknowledged "
                                "(kept in the ring and sent again).",
        "backpressure": "Times a batch was held back because its stream shard was over "
                        "its share of max_backlog_bytes.",
    },
    gauges=(
        "redis_ok",   # 1.0 after a successful round trip, 0.0 after a failure
        "heartbeat",  # time.monotonic() of the flusher's last loop
        "rings",      # rings the flusher serves now
        "ring_in_use",  # the Assign.no of the ring whose mapping it touches now, else 0
    ),
    histograms={
        "flush_seconds": ("Duration of one batch round trip to Redis (XADD).",
                          (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                           1.0, 2.5, 5.0, 10.0)),
    },
)


class DaemonCollector(Collector):
    """Reads the flushers' shared counters (the pool) and the ring triage's snapshot."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[Any]:
        sup = self.sup
        slots = sup.pool.slots
        triage = sup.triage
        yield from FLUSHER_COUNTERS.families(P, {(): [s.counters for s in slots]})

        snap = triage.snapshot
        drops = CounterMetricFamily(P + "dropped_records",
                                    "Records producers dropped, by cause, from ring headers "
                                    "(full: no room; oversize: over max_record_bytes).",
                                    labels=["cause"])
        full = triage.removed_drops[0] + sum(s.dropped_full for s in snap)
        oversize = triage.removed_drops[1] + sum(s.dropped_oversize for s in snap)
        drops.add_metric(["full"], full)
        drops.add_metric(["oversize"], oversize)
        yield drops

        fill = GaugeMetricFamily(P + "ring_fill_ratio", "Used fraction of each ring.",
                                 labels=["ring"])
        pending = GaugeMetricFamily(P + "ring_pending_records",
                                    "Records written but not yet committed, per ring.",
                                    labels=["ring"])
        for s in snap:
            fill.add_metric([s.ring_id], s.fill_ratio)
            pending.add_metric([s.ring_id], float(s.pending))
        yield fill
        yield pending

        rings = GaugeMetricFamily(P + "rings", "Ring files by state.", labels=["state"])
        rings.add_metric(["served"], float(len(snap)))
        rings.add_metric(["refused"], float(len(triage.refused)))
        yield rings
        yield CounterMetricFamily(P + "rings_quarantined",
                                  "Ring files moved to quarantine/ (junk or corrupted).",
                                  value=float(triage.quarantined_total))
        yield CounterMetricFamily(P + "rings_removed",
                                  "Rings of dead producers removed after draining.",
                                  value=float(triage.removed_total))

        backlog = GaugeMetricFamily(P + "stream_backlog_entries",
                                    "Entries in each stream shard (XLEN).", labels=["shard"])
        size = GaugeMetricFamily(P + "stream_backlog_bytes",
                                 "Bytes Redis reports for each stream shard (MEMORY USAGE); "
                                 "the budget is max_backlog_bytes over the shards.",
                                 labels=["shard"])
        for key, (length, nbytes) in sup.backlog().items():
            backlog.add_metric([key], float(length))
            if nbytes is not None:
                size.add_metric([key], float(nbytes))
        yield backlog
        yield size
        yield GaugeMetricFamily(P + "stream_backlog_budget_bytes",
                                "Each shard's share of max_backlog_bytes: at it, flushers keep "
                                "records in the rings.",
                                value=float(sup.cfg.max_backlog_bytes // sup.cfg.stream_shards))
        yield GaugeMetricFamily(P + "ready", "1 while /readyz says 200.",
                                value=1.0 if sup.readiness()[0] else 0.0)

        yield GaugeMetricFamily(P + "flushers_alive", "Flusher processes alive.",
                                value=float(sum(1 for s in slots if s.alive())))
        yield GaugeMetricFamily(P + "flushers", "Configured flusher processes (pool_size).",
                                value=float(len(slots)))
        yield CounterMetricFamily(P + "flusher_restarts", "Dead flushers restarted.",
                                  value=float(sum(s.restarts for s in slots)))
        path = GaugeMetricFamily(P + "ring_path", "The ring path this daemon reads with "
                                 "(native: tail loaded with acquire), 1 on its label.",
                                 labels=["path"])
        path.add_metric([ring_path()], 1.0)
        yield path


def health_server(host: str, port: int, sup: Supervisor) -> HealthServer:
    """The daemon's ``/healthz``, ``/readyz`` and ``/metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(sup))
    return HealthServer(
        host, port, readiness=sup.readiness, registry=registry,
        on_error=lambda path, exc: log.error("HTTP handler failed.", path=path,
                                             error=repr(exc)),
        name="collector-http")
