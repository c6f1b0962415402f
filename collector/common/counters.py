"""Counters a worker process shares with its supervisor, without locks, by name.

A :class:`Layout` is declared once from names: counters (exported to
Prometheus as ``<prefix><name>_total``), gauges (values the supervisor reads,
such as a heartbeat) and histograms with their bucket bounds. Each worker
process gets one :class:`Slot`, a ``multiprocessing.RawArray('d')``
allocated by the supervisor before the spawn and laid out as::

    [counters...] [gauges...] [per histogram: sum, count, one count per bucket, +Inf]

(buckets are not cumulative in the slot; :meth:`Layout.families` sums
them). Only the slot's worker writes it, one aligned 8-byte store per value
(atomic on x86-64; elsewhere a reader may see a value a moment old, never a
torn one on platforms with aligned 8-byte stores), and the supervisor only
reads; counts are exact up to 2**53. The array outlives a restarted worker,
so counters never go back. Adding a metric is adding its name to the layout.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from multiprocessing.sharedctypes import RawArray
from typing import Any

__all__ = ["Layout", "Slot"]


class Layout:
    """Where each named value lives in a slot's array of doubles."""

    def __init__(self, *, counters: Mapping[str, str] = {},
                 gauges: Iterable[str] = (),
                 histograms: Mapping[str, tuple[str, Sequence[float]]] = {}) -> None:
        self.counters = dict(counters)  # name -> help text
        self.histograms = {name: (doc, tuple(bounds)) for name, (doc, bounds) in histograms.items()}
        self.index: dict[str, int] = {}
        for name in (*self.counters, *gauges):
            self._add(name)
        for name, (_, bounds) in self.histograms.items():
            if list(bounds) != sorted(set(bounds)):
                raise ValueError(f"histogram {name!r}: bucket bounds must increase")
            self._add(f"{name}:sum")
            self._add(f"{name}:count")
            for i in range(len(bounds) + 1):
                self._add(f"{name}:{i}")
        self.size = len(self.index)

    def _add(self, name: str) -> None:
        if name in self.index:
            raise ValueError(f"{name!r} is declared twice")
        self.index[name] = len(self.index)

    def new_slot(self, ctx: Any = None) -> Slot:
        """A zeroed slot in shared memory (create it before spawning its worker)."""
        array = ctx.RawArray("d", self.size) if ctx is not None else RawArray("d", self.size)
        return Slot(self, array)

    def local_slot(self) -> Slot:
        """A slot in this process only (a worker run without a supervisor, tests)."""
        return Slot(self, [0.0] * self.size)

    def total(self, slots: Iterable[Slot], name: str) -> float:
        i = self.index[name]
        return float(sum(s.values[i] for s in slots))

    def families(self, prefix: str, slots: Mapping[tuple[str, ...], Sequence[Slot]],
                 labels: Sequence[str] = ()) -> Iterator[Any]:
        """Prometheus families of every counter and histogram, summed per label set.

        ``slots`` maps label values (``()`` without labels) to the slots to add up.
        """
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        for name, doc in self.counters.items():
            fam = CounterMetricFamily(prefix + name, doc, labels=list(labels))
            for values, group in slots.items():
                fam.add_metric(list(values), self.total(group, name))
            yield fam
        for name, (doc, bounds) in self.histograms.items():
            hist = HistogramMetricFamily(prefix + name, doc, labels=list(labels))
            for values, group in slots.items():
                cum = 0.0
                buckets = []
                for i, bound in enumerate((*bounds, float("inf"))):
                    cum += self.total(group, f"{name}:{i}")
                    buckets.append(("+Inf" if i == len(bounds) else repr(bound), cum))
                hist.add_metric(list(values), buckets,
                                sum_value=self.total(group, f"{name}:sum"))
            yield hist


class Slot:
    """One worker's values; ``add``/``set``/``observe`` by name, ``get`` to read."""

    __slots__ = ("index", "layout", "values")

    def __init__(self, layout: Layout, values: Any) -> None:
        self.layout = layout
        self.index = layout.index
        self.values = values

    def __reduce__(self) -> tuple[Any, ...]:
        return (Slot, (self.layout, self.values))

    def add(self, name: str, n: float = 1) -> None:
        self.values[self.index[name]] += n

    def set(self, name: str, value: float) -> None:
        self.values[self.index[name]] = value

    def get(self, name: str) -> float:
        return self.values[self.index[name]]

    def observe(self, name: str, value: float) -> None:
        """Count ``value`` in histogram ``name``."""
        values, index = self.values, self.index
        values[index[f"{name}:sum"]] += value
        values[index[f"{name}:count"]] += 1
        bucket = bisect_left(self.layout.histograms[name][1], value)
        values[index[f"{name}:{bucket}"]] += 1
