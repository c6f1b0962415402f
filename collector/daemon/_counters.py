"""Counters a flusher shares with the supervisor without locks.

Each flusher slot owns one ``multiprocessing.RawArray('d', SIZE)``; the
flusher is its only writer and the supervisor only reads it (for
``/metrics`` and ``/readyz``). A double is one aligned 8-byte store, so a
reader never sees a torn value; the counts are exact up to 2**53. A
restarted flusher keeps its slot's array, so counters never go back.

Layout (index: meaning)::

    0  records_read       records read from rings
    1  records_written    records Redis accepted (then committed)
    2  batches_written    stream entries Redis accepted
    3  bytes_written      record payload bytes Redis accepted
    4  redis_errors       failed round trips (connection, timeout, error reply)
    5  pushbacks          batches held back because a shard was over budget
    6  redis_ok           1.0 after a successful round trip, 0.0 after a failure
    7  heartbeat          time.monotonic() of the flusher's last loop
    8  rings              rings the flusher serves now
    9  latency_sum        seconds spent in successful round trips
   10  latency_count
   11+ latency buckets    per-bucket (not cumulative) counts, LATENCY_BUCKETS + Inf
"""

from __future__ import annotations

from multiprocessing.sharedctypes import RawArray
from typing import Any

RECORDS_READ = 0
RECORDS_WRITTEN = 1
BATCHES_WRITTEN = 2
BYTES_WRITTEN = 3
REDIS_ERRORS = 4
PUSHBACKS = 5
REDIS_OK = 6
HEARTBEAT = 7
RINGS = 8
LATENCY_SUM = 9
LATENCY_COUNT = 10
LATENCY_BASE = 11
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
SIZE = LATENCY_BASE + len(LATENCY_BUCKETS) + 1


def new_slot() -> Any:
    """A zeroed counter array for one flusher slot (create before spawning)."""
    return RawArray("d", SIZE)


def observe_latency(arr: Any, seconds: float) -> None:
    arr[LATENCY_SUM] += seconds
    arr[LATENCY_COUNT] += 1
    i = 0
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            break
        i += 1
    arr[LATENCY_BASE + i] += 1
