"""What the end-to-end tests into the aggregate, kafka, influx and elasticsearch sinks
share (``test_e2e_aggregate.py``, ``test_e2e_sinks.py``).

Producers (``collector.Analytics``, block policy) -> ``collector-daemon`` ->
a redis-server -> ``collector-pump`` -> the sink's target. Every test sends
``PRODUCERS x COUNT`` records plus one poison record that the sink must reject
alone (dead-lettered alone; the rest of its entry is delivered), makes the
target unavailable in the middle of the load, and then counts what arrived by
id (lost, unexpected, duplicated).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from collector.common.stream import decode_entry
from collector.testing import (
    Daemon,
    Producers,
    Pump,
    RedisServer,
    account,
    authz_record,
    record_key,
    wait_until,
)

from .test_e2e import KEY, Stack

PRODUCERS, COUNT = 3, 6000
POISON = (0, 1234)  # (producer, seq) of the record every sink must reject
POISON_ID = f"{POISON[0]}:{POISON[1]}"
T0 = 1_700_000_000  # records' times: T0 + seq // 10 seconds


def make_record(producer: int, seq: int) -> dict[str, Any]:
    """The record producer ``producer`` sends as ``seq``: a time and a number to aggregate."""
    rec = authz_record(producer, seq)
    rec["timestamp"] = T0 + seq // 10
    rec["latency_ms"] = (seq * 37 + producer) % 500 + 0.25
    if (producer, seq) == POISON:
        rec["latency_ms"] = "slow"  # not a number: a type conflict for every sink
        rec["pad"] = "p" * 60_000  # and larger than the kafka sink's message_max_bytes
    return rec


class Load:
    """PRODUCERS producer processes sending COUNT records each (and the poison).

    The pace only spreads the load over a few seconds; nothing waits on it.
    """

    def __init__(self, collector_yaml: Path) -> None:
        self.producers = Producers.analytics(collector_yaml, PRODUCERS, COUNT,
                                             pace=(25, 0.03), record=make_record)

    def start(self) -> Load:
        self.producers.start()
        return self

    def join(self) -> None:
        assert self.producers.join(180) == 0, "a producer dropped records"

    def kill(self) -> None:
        self.producers.kill()


def sink_stack(tmp_path: Path, redis_server: RedisServer) -> Iterator[Stack]:
    """The tests' ``stack`` fixture: a :class:`Stack` whose loads are killed at the end."""
    s = Stack(tmp_path, redis_server)
    load: list[Load] = []
    s.load = load  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        for ld in load:
            ld.kill()
        s.close()


def start(stack: Stack, sink: dict[str, Any], *, pump_first: bool = True,
          **extra: Any) -> tuple[Pump, Load]:
    """Daemon, pump (started after the load when not ``pump_first``) and the load."""
    # small stream entries (20 records), so that there are many of them to deliver
    stack.daemon = Daemon.write(stack.tmp, stack.redis.url, full_policy="block",
                                block_timeout_ms=60_000, ring_capacity_bytes=8 << 20,
                                batch_size=20)
    stack.daemon.start()
    pump = stack.write_pump({"sink": sink}, read_count=5, max_deliveries=50, **extra)
    if pump_first:
        pump.start()
    load = Load(stack.collector_yaml)
    stack.load.append(load)  # type: ignore[attr-defined]
    return pump, load.start()


def expected_ids() -> set[str]:
    """Every (producer, seq) but the poison, as "p:s"."""
    return {f"{p}:{s}" for p in range(PRODUCERS) for s in range(COUNT)} - {POISON_ID}


def report(test: str, seen: Counter[str]) -> tuple[int, int, int]:
    acc = account(seen, expected_ids())
    print(f"{test}: {acc}")
    return acc.lost, acc.unexpected, acc.duplicated


def dead_lettered(stack: Stack) -> set[str]:
    """"p:s" of every record in the sink's dead-letter stream."""
    out = set()
    for _, fields in stack.r.xrange(f"{KEY}:dead:sink"):
        if b"recs" not in fields:
            continue
        for raw in decode_entry(fields).records:
            producer, seq = record_key(msgpack.unpackb(raw, raw=False))
            out.add(f"{producer}:{seq}")
    return out


def settle(stack: Stack, load: Load) -> None:
    load.join()
    wait_until(lambda: stack.all_acknowledged("sink"), 120,
               "the sink's group to acknowledge everything", interval=0.2)
    assert POISON_ID in dead_lettered(stack), "the poison record is not dead-lettered"
