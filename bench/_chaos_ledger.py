"""``bench chaos``: the producers, and the ledger that checks every sink against them."""

from __future__ import annotations

import collections
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def producer_main(producer_id: int, config_path: str, rate: float, state: Any,
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
    from collector.testing import authz_record

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


LASTING = ("hung_sink", "foreign_group")  # undone on a timer, other faults meanwhile


@dataclass
class Fault:
    n: int
    kind: str
    at: float  # seconds since the start of the load (time.time() in ``wall``)
    wall: float
    held_s: float = 0.0
    detail: str = ""
    producer_drops: int = 0  # record_hit calls that returned False while it lasted
    extra: dict[str, Any] = field(default_factory=dict)  # what a fault kind reports
    # the faults injected while this one lasted (hung_sink and foreign_group last on)
    overlapped: list[str] = field(default_factory=list)


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
    lost_by_fault: dict[str, int] = field(default_factory=dict)  # as duplicates_by_fault
    # records the pump logged as dropped from this sink's full spool (overflow:
    # drop_oldest): missing here and only here; lost_beyond_spool_drops is the rest
    spool_dropped: int = 0
    lost_beyond_spool_drops: int = 0
    records_spooled_seen: int = 0  # in /metrics, summed over pump restarts
    spool_dropped_seen: int = 0
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
        # a record sent while a fault was under way is put down to it, else to the first
        # fault after it (foreign groups make no copies and lose nothing: never)
        lasting = sorted((f.wall, f.wall + f.held_s, f.kind) for f in faults
                         if f.kind != "foreign_group")

        def cause_of(t: float) -> str | None:
            live = next((k for w0, w1, k in lasting if w0 <= t <= w1 + 1.0), None)
            return live or next((k for w, k in fault_walls if w >= t - 1.0), None)
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
                    cause = cause_of(t) or "none"
                    rep.lost_by_fault[cause] = rep.lost_by_fault.get(cause, 0) + 1
                    if len(rep.lost_sample) < 10:
                        rep.lost_sample.append(f"producer {pid} seq {seq} (sent ~"
                                               f"{time.strftime('%H:%M:%S', time.localtime(t))}"
                                               f", fault {cause})")
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
                cause = cause_of(t)
                if cause is None:
                    rep.duplicates_unexplained += c - 1
                else:
                    rep.duplicates_by_fault[cause] = rep.duplicates_by_fault.get(cause, 0) + c - 1
        return rep
