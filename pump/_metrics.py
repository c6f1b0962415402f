"""The pump's metrics: the workers' shared counters and the Prometheus collector.

Each worker slot owns one :data:`WORKER_COUNTERS` slot (shared memory,
``collector/common/counters.py``) allocated by the supervisor and handed to
the worker process at spawn; only that worker writes it, the supervisor
reads it for ``/metrics``, ``/readyz`` and its watchdog (``write_deadline``).
The slot outlives a restarted worker, so counters stay monotonic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from collector.common.counters import Layout, Slot

WORKER_COUNTERS = Layout(
    counters={
        "records_in": "Records decoded from the stream.",
        "records_out": "Records the sink accepted.",
        "records_filtered": "Records dropped by the sink's filters.",
        "records_dead_lettered": "Records sent to the sink's dead-letter stream.",
        "dead_letters_dropped": "Oldest dead letters dropped to keep the sink's dead-letter "
                                "stream within dead_letter_max_entries.",
        "decode_errors": "Stream entries or records that did not decode or convert.",
        "records_trimmed": "Records whose string fields were trimmed to max_record_bytes.",
        "write_retries": "Write attempts after the first.",
        "write_errors": "Failed write attempts.",
        "batches_written": "Batches the sink accepted.",
        "entries_acked": "Stream entries acknowledged.",
        "entries_spooled": "Stream entries moved into the sink's spool (then acknowledged).",
        "records_spooled": "Records moved into the sink's spool.",
        "entries_unspooled": "Spooled entries the sink took (or dead-lettered).",
        "spool_dropped_records": "Records dropped from a full spool (overflow: drop_oldest): "
                                 "lost for this sink.",
    },
    gauges=(
        "heartbeat",       # time.monotonic() of the worker's last loop turn
        "write_deadline",  # monotonic deadline of the write in progress, 0 if none
        "state",           # one of the STATE_* values below
        "pid",
        "spool_bytes",    # bytes of undelivered entries in the worker's spool
        "spool_entries",  # undelivered entries in it
    ),
    histograms={
        "write_seconds": ("Latency of successful sink writes.",
                          (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                           5.0, 10.0, 30.0)),
    },
)

STATE_STARTING, STATE_RUNNING, STATE_OUTAGE, STATE_STOPPING = 0, 1, 2, 3


class PumpCollector(Collector):
    """Reads every worker slot (and the supervisor's own gauges) at scrape time."""

    def __init__(self, slots: Mapping[str, Sequence[Slot]],
                 lag: Callable[[], Iterable[tuple[str, str, float, float, float]]],
                 restarts: Callable[[str], int],
                 alive: Callable[[str], int],
                 foreign: Callable[[], Iterable[tuple[str, str, int | None, int]]] = list,
                 trims: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 readiness: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
                 budget: Any = None) -> None:
        self.slots = slots
        self.lag = lag
        self.restarts = restarts
        self.alive = alive
        self.foreign = foreign
        self.trims = trims
        self.readiness = readiness
        self.budget = budget  # pump._budget.Budget

    def collect(self) -> Iterable[Any]:
        p = "collector_pump_"
        yield from WORKER_COUNTERS.families(
            p, {(sink,): slots for sink, slots in self.slots.items()}, labels=["sink"])
        restarts = CounterMetricFamily(p + "worker_restarts", "Worker processes restarted.",
                                       labels=["sink"])
        alive = GaugeMetricFamily(p + "workers_alive", "Worker processes alive.", labels=["sink"])
        outage = GaugeMetricFamily(p + "workers_in_outage",
                                   "Workers waiting for their sink to come back.", labels=["sink"])
        for sink, slots in self.slots.items():
            restarts.add_metric([sink], self.restarts(sink))
            alive.add_metric([sink], self.alive(sink))
            outage.add_metric([sink], sum(1 for s in slots if s.get("state") == STATE_OUTAGE))
        yield restarts
        yield alive
        yield outage
        spool_bytes = GaugeMetricFamily(p + "spool_bytes",
                                        "Bytes of undelivered entries in the sink's spools.",
                                        labels=["sink"])
        spool_entries = GaugeMetricFamily(p + "spool_entries",
                                          "Undelivered entries in the sink's spools.",
                                          labels=["sink"])
        for sink, slots in self.slots.items():
            spool_bytes.add_metric([sink], sum(s.get("spool_bytes") for s in slots))
            spool_entries.add_metric([sink], sum(s.get("spool_entries") for s in slots))
        yield spool_bytes
        yield spool_entries
        lag = GaugeMetricFamily(p + "group_lag_entries",
                                "Stream entries not yet delivered to the sink's group.",
                                labels=["sink", "stream"])
        pending = GaugeMetricFamily(p + "group_pending_entries",
                                    "Entries delivered to the group but not acknowledged.",
                                    labels=["sink", "stream"])
        oldest = GaugeMetricFamily(p + "group_oldest_age_seconds",
                                   "Age of the oldest entry the sink's group has not "
                                   "acknowledged (0: none).", labels=["sink", "stream"])
        try:
            rows = list(self.lag())
        except Exception:
            rows = []
        for sink, stream, lag_v, pend, age in rows:
            lag.add_metric([sink, stream], lag_v)
            pending.add_metric([sink, stream], pend)
            oldest.add_metric([sink, stream], age)
        yield lag
        yield pending
        yield oldest
        if self.readiness is not None:
            ready, detail = self.readiness()
            yield GaugeMetricFamily(p + "ready", "1 while /readyz says 200.",
                                    value=1.0 if ready else 0.0)
            per_sink = GaugeMetricFamily(p + "sink_ready",
                                         "1 while /readyz counts the sink ready.",
                                         labels=["sink"])
            for sink in self.slots:
                ok = detail.get("sinks", {}).get(sink, {}).get("ready")
                per_sink.add_metric([sink], 1.0 if ok else 0.0)
            yield per_sink
        foreign = GaugeMetricFamily(
            p + "foreign_group_lag_entries",
            "Consumer groups on the stream of no configured sink nor respect_groups (trimming "
            "does not wait for them): entries not yet delivered to each, -1 if unknown.",
            labels=["stream", "group"])
        try:
            for stream, group, lag_n, _ in self.foreign():
                foreign.add_metric([stream, group], -1.0 if lag_n is None else float(lag_n))
        except Exception:
            pass
        yield foreign
        passes, removed = self.trims()
        yield CounterMetricFamily(p + "trim_passes", "Trim passes over every shard.",
                                  value=passes)
        yield CounterMetricFamily(p + "trimmed_entries",
                                  "Stream entries removed by trimming.", value=removed)
        if self.budget is not None:
            yield from _budget_families(p, self.budget)


def _budget_families(p: str, budget: Any) -> Iterable[Any]:
    used = GaugeMetricFamily(p + "backlog_budget_bytes",
                             "Each shard's share of the stream's budget the sinks spool "
                             "against, by where it comes from (config, daemon, default).",
                             labels=["source"])
    used.add_metric([budget.source()], float(budget.per_shard()))
    yield used
    daemon = GaugeMetricFamily(p + "daemon_backlog_budget_bytes",
                               "Each shard's share of max_backlog_bytes as the daemons publish "
                               "it (the smallest live one's); no sample when none does.")
    if budget.daemon is not None:
        daemon.add_metric([], float(budget.daemon))
    yield daemon
    yield GaugeMetricFamily(p + "backlog_budget_mismatch",
                            "1 while the pump's max_backlog_bytes is set and differs from "
                            "the daemon's (the pump's is used).",
                            value=1.0 if budget.mismatch() else 0.0)
