"""Producer processes: :func:`authz_record` ``(p, 0..count-1)`` into a ring each."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from ._records import authz_record

Record = Callable[[int, int], dict[str, Any]]

__all__ = ["Producers", "record_through_analytics", "write_ring"]

CTX = mp.get_context("spawn")


def write_ring(rings_dir: str, producer: int, count: int, capacity: int = 4 << 20,
               close: bool = True, pace_every: int = 0, pace_s: float = 0.0,
               started: Any = None, record: Record = authz_record) -> None:
    """Write ``record(producer, seq)`` for ``seq < count`` into a new ring (4 MiB by
    default) as ``record_hit`` would, and never drop one.

    A full ring makes the producer wait for room (a drop would count as lost).
    ``pace_every``/``pace_s`` pause to keep a load running for a while;
    ``close=False`` leaves the ring open and the process alive until killed.
    """
    import msgpack

    import ringbuf

    writer = ringbuf.RingWriter.create(rings_dir, capacity_bytes=capacity)
    if started is not None:
        started.set()
    packb = msgpack.Packer(use_bin_type=True).pack
    write = writer.try_write
    for seq in range(count):
        payload = packb(record(producer, seq))
        while not write(payload):
            time.sleep(0.0005)
        if pace_every and seq % pace_every == pace_every - 1:
            time.sleep(pace_s)
    if close:
        writer.close()
    else:
        while True:  # a live producer, until killed
            time.sleep(1)


def record_through_analytics(config: str, producer: int, count: int, dropped: Any,
                             pace_every: int = 0, pace_s: float = 0.0,
                             record: Record = authz_record) -> None:
    """``collector.Analytics.record_hit`` of ``record(producer, seq)`` for ``seq < count``
    (client configured by the file ``config``); ``dropped.value`` = records dropped."""
    from collector import Analytics

    analytics = Analytics.from_config(config, environ={}).start()
    drops = 0
    for seq in range(count):
        if not analytics.record_hit(record(producer, seq)):
            drops += 1
        if pace_every and seq % pace_every == pace_every - 1:
            time.sleep(pace_s)
    dropped.value = drops
    analytics.stop()


class Producers:
    """``n`` spawned producer processes numbered ``first..first+n-1``, ``count`` records each.

    :meth:`ring` writes straight into rings in a directory (what a daemon
    drains); :meth:`analytics` records through ``collector.Analytics``
    configured by a file (drops counted, see :meth:`join`). ``pace`` is
    ``(every, seconds)``: a pause of ``seconds`` every ``every`` records.
    ``record(producer, seq)`` makes the records (:func:`authz_record`; another
    generator must be a module-level function, the producers are spawned).
    """

    def __init__(self, target: Callable[..., None], n: int, first: int,
                 args: Callable[[int, Any], tuple[Any, ...]],
                 kwargs: dict[str, Any] | None = None) -> None:
        self.n, self.first = n, first
        self.drops = [CTX.Value("q", 0) for _ in range(n)]
        self.procs = [CTX.Process(target=target, args=args(first + i, self.drops[i]),
                                  kwargs=kwargs or {}, daemon=True) for i in range(n)]

    @classmethod
    def ring(cls, rings_dir: Path, n: int, count: int, *, first: int = 0,
             capacity: int = 4 << 20, close: bool = True,
             pace: tuple[int, float] | None = None, record: Record = authz_record
             ) -> Producers:
        every, secs = pace or (0, 0.0)
        return cls(write_ring, n, first, lambda p, _: (str(rings_dir), p, count),
                   {"capacity": capacity, "close": close, "pace_every": every, "pace_s": secs,
                    "record": record})

    @classmethod
    def analytics(cls, config: Path, n: int, count: int, *, first: int = 0,
                  pace: tuple[int, float] | None = None, record: Record = authz_record
                  ) -> Producers:
        every, secs = pace or (0, 0.0)
        return cls(record_through_analytics, n, first,
                   lambda p, dropped: (str(config), p, count, dropped, every, secs, record))

    def start(self) -> Self:
        for p in self.procs:
            p.start()
        return self

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.is_alive())

    def join(self, timeout: float = 120.0) -> int:
        """Wait for every producer to exit 0 (else ``AssertionError``); the records dropped."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            assert p.exitcode == 0, f"producer {p.pid} exited with {p.exitcode}"
        return sum(d.value for d in self.drops)

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(10)
