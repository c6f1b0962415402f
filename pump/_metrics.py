"""Counters that pump workers share with the supervisor, without locks.

Each worker slot owns one ``multiprocessing.RawArray('d', SLOT_SIZE)``
allocated by the supervisor and handed to the worker process at spawn. Only
that worker writes it (one aligned 8-byte store per field, atomic on
x86-64; elsewhere a reader may see a value a moment old, never a torn one on
64-bit platforms that have aligned 8-byte stores); the supervisor only
reads. The array outlives a restarted worker, so counters stay monotonic.

Layout (indices into the array)::

    0  records_in          records decoded from stream entries
    1  records_out         records the sink accepted
    2  records_filtered    records dropped by filters
    3  records_dead        records sent to the dead-letter stream
    4  decode_errors       entries or records that did not decode
    5  records_trimmed     records whose string fields were cut to max_record_size
    6  retries             write attempts after the first, per batch
    7  write_errors        failed write attempts
    8  batches             batches the sink accepted
    9  entries_acked       stream entries acknowledged
    10 write_seconds_sum   histogram sum
    11 write_count         histogram count
    12 heartbeat           time.monotonic() of the worker's last loop turn
    13 write_deadline      monotonic deadline of the write in progress, 0 if none
    14 state               0 starting, 1 running, 2 sink outage, 3 stopping
    15 pid
    16.. one bucket per LATENCY_BUCKETS bound, then +Inf (not cumulative)
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing.sharedctypes import RawArray
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

(IN, OUT, FILTERED, DEAD, DECODE_ERRORS, TRIMMED, RETRIES, WRITE_ERRORS, BATCHES, ACKED,
 LAT_SUM, LAT_COUNT, HEARTBEAT, WRITE_DEADLINE, STATE, PID) = range(16)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
_BUCKET0 = 16
SLOT_SIZE = _BUCKET0 + len(LATENCY_BUCKETS) + 1

STATE_STARTING, STATE_RUNNING, STATE_OUTAGE, STATE_STOPPING = 0, 1, 2, 3


def new_slot() -> Any:
    return RawArray("d", SLOT_SIZE)


class Counters:
    """A worker's view of its slot (a plain list when run without a supervisor)."""

    __slots__ = ("a",)

    def __init__(self, array: Any | None = None) -> None:
        self.a = array if array is not None else [0.0] * SLOT_SIZE

    def add(self, index: int, n: float = 1) -> None:
        self.a[index] += n

    def get(self, index: int) -> float:
        return self.a[index]

    def set(self, index: int, value: float) -> None:
        self.a[index] = value

    def observe_write(self, seconds: float) -> None:
        a = self.a
        a[LAT_SUM] += seconds
        a[LAT_COUNT] += 1
        a[_BUCKET0 + bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def beat(self) -> None:
        self.a[HEARTBEAT] = time.monotonic()


_COUNTERS = (
    (IN, "records_in", "Records decoded from the stream."),
    (OUT, "records_out", "Records the sink accepted."),
    (FILTERED, "records_filtered", "Records dropped by the sink's filters."),
    (DEAD, "records_dead_lettered", "Records sent to the sink's dead-letter stream."),
    (DECODE_ERRORS, "decode_errors", "Stream entries or records that did not decode."),
    (TRIMMED, "records_trimmed", "Records whose string fields were trimmed to max_record_size."),
    (RETRIES, "write_retries", "Write attempts after the first."),
    (WRITE_ERRORS, "write_errors", "Failed write attempts."),
    (BATCHES, "batches_written", "Batches the sink accepted."),
    (ACKED, "entries_acked", "Stream entries acknowledged."),
)


class PumpCollector(Collector):
    """Reads every worker slot (and the supervisor's own gauges) at scrape time."""

    def __init__(self, slots: Mapping[str, Sequence[Any]],
                 lag: Callable[[], Iterable[tuple[str, str, float, float]]],
                 restarts: Callable[[str], int],
                 alive: Callable[[str], int]) -> None:
        self.slots = slots
        self.lag = lag
        self.restarts = restarts
        self.alive = alive

    def collect(self) -> Iterable[Any]:
        p = "collector_pump_"
        for index, name, doc in _COUNTERS:
            fam = CounterMetricFamily(p + name, doc, labels=["sink"])
            for sink, arrays in self.slots.items():
                fam.add_metric([sink], sum(a[index] for a in arrays))
            yield fam
        hist = HistogramMetricFamily(p + "write_seconds", "Latency of successful sink writes.",
                                     labels=["sink"])
        for sink, arrays in self.slots.items():
            cum = 0.0
            buckets = []
            for i, bound in enumerate((*LATENCY_BUCKETS, float("inf"))):
                cum += sum(a[_BUCKET0 + i] for a in arrays)
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cum))
            hist.add_metric([sink], buckets, sum_value=sum(a[LAT_SUM] for a in arrays))
        yield hist
        restarts = CounterMetricFamily(p + "worker_restarts", "Worker processes restarted.",
                                       labels=["sink"])
        alive = GaugeMetricFamily(p + "workers_alive", "Worker processes alive.", labels=["sink"])
        outage = GaugeMetricFamily(p + "workers_in_outage",
                                   "Workers waiting for their sink to come back.", labels=["sink"])
        for sink, arrays in self.slots.items():
            restarts.add_metric([sink], self.restarts(sink))
            alive.add_metric([sink], self.alive(sink))
            outage.add_metric([sink], sum(1 for a in arrays if a[STATE] == STATE_OUTAGE))
        yield restarts
        yield alive
        yield outage
        lag = GaugeMetricFamily(p + "group_lag_entries",
                                "Stream entries not yet delivered to the sink's group.",
                                labels=["sink", "stream"])
        pending = GaugeMetricFamily(p + "group_pending_entries",
                                    "Entries delivered to the group but not acknowledged.",
                                    labels=["sink", "stream"])
        try:
            rows = list(self.lag())
        except Exception:
            rows = []
        for sink, stream, lag_v, pend in rows:
            lag.add_metric([sink, stream], lag_v)
            pending.add_metric([sink, stream], pend)
        yield lag
        yield pending
