"""``prometheus`` sink: counters and histograms aggregated from record fields.

The sink serves its own registry on ``address`` (default ``127.0.0.1:9464``,
path ``/metrics``) through the daemon's and pump's own bounded server
(:mod:`collector.common.health`: one thread, at most 64 connections, a short
request timeout). The endpoint carries no authentication: a non-loopback
``address`` is refused unless ``allow_remote: true`` (then a warning when it
opens). Configured metrics::

    counters:
      - name: collector_decisions_total        # the default
        help: Authorization decisions by effect and user.
        labels: [effect, username]              # record fields -> label values
    histograms:
      - name: collector_request_latency_seconds
        help: Request latency.
        field: latency_ms                       # numeric record field
        scale: 0.001                            # multiply the value (ms -> s)
        labels: [effect]
        buckets: [0.005, 0.01, 0.05, 0.1, 0.5, 1]

A missing label field gives the label value ``""``; a record whose histogram
field is missing or not a number is not observed. To bound cardinality, a
metric keeps at most ``max_label_sets`` label combinations; later new
combinations are counted under every label set to ``__other__``.

Idempotence holds only within a process: the sink remembers the last
``dedupe_window_records`` record ids and ignores a redelivered one. A
restarted process starts its counters at zero (Prometheus treats that as a
counter reset), so nothing is double counted across restarts either, but
the ids seen before the restart are forgotten. Each process binds its own
address: run this sink with ``workers: 1``.
"""

from __future__ import annotations

import re
from collections import deque
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collector.common.log import get_logger
from collector.common.service import is_loopback

from ._base import Batch, RetryableError, Sink, SinkConfig, Verdict, register
from ._values import time_text

log = get_logger(__name__)

_NAME = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
_LABEL = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
OTHER = "__other__"


class CounterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=_NAME)
    help: str = "Records counted by the collector."
    labels: tuple[str, ...] = ()

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in value if not re.match(_LABEL, v) or v.startswith("__")]
        if bad:
            raise ValueError(f"label names {bad} must match {_LABEL} and not start with __")
        return value


class HistogramSpec(CounterSpec):
    help: str = "Values observed by the collector."
    field: str = Field(min_length=1, description="numeric record field to observe")
    scale: float = 1.0
    buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


DEFAULT_COUNTERS = (CounterSpec(name="collector_decisions_total",
                                help="Authorization decisions by effect and user.",
                                labels=("effect", "username")),)


class PrometheusConfig(SinkConfig):
    """``meta`` of a ``prometheus`` sink."""

    address: str = Field(default="127.0.0.1:9464", description="host:port to serve /metrics")
    allow_remote: bool = Field(default=False,
                               description="serve a non-loopback address (no authentication)")
    counters: tuple[CounterSpec, ...] = DEFAULT_COUNTERS
    histograms: tuple[HistogramSpec, ...] = ()
    max_label_sets: int = Field(default=10_000, ge=1)
    dedupe_window_records: int = Field(default=100_000, ge=0)

    @model_validator(mode="after")
    def _check(self) -> PrometheusConfig:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"address {self.address!r} must be host:port")
        if not is_loopback(host.strip("[]")) and not self.allow_remote:
            raise ValueError(f"address {self.address!r} is not a loopback address; /metrics "
                             "carries no authentication: set allow_remote: true to serve it "
                             "on other interfaces anyway")
        names = [m.name for m in (*self.counters, *self.histograms)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"metric names must be unique; repeated: {dupes}")
        return self


class _Metric:
    """One configured metric and the label sets it has seen."""

    def __init__(self, spec: CounterSpec, metric: Any, limit: int) -> None:
        self.spec, self.metric, self.limit = spec, metric, limit
        self.seen: set[tuple[str, ...]] = set()

    def child(self, values: tuple[str, ...]) -> Any:
        if values not in self.seen:
            if len(self.seen) >= self.limit:
                values = (OTHER,) * len(values)
            self.seen.add(values)
        return self.metric.labels(*values) if values else self.metric


@register
class PrometheusSink(Sink):
    name = "prometheus"
    Config = PrometheusConfig

    def __init__(self, config: PrometheusConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._server: Any = None
        self._counters: list[_Metric] = []
        self._histograms: list[_Metric] = []
        self._ids: set[str] = set()
        self._order: deque[str] = deque()
        self.port: int | None = None

    @property
    def deduplicates(self) -> bool:  # type: ignore[override]
        """Within one process, for the last ``dedupe_window_records`` ids; 0 turns it off."""
        return self.cfg.dedupe_window_records > 0

    def open(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        from collector.common.health import HealthServer

        if self._server is not None:
            return
        registry = CollectorRegistry(auto_describe=True)
        limit = self.cfg.max_label_sets
        self._counters = [
            _Metric(c, Counter(c.name, c.help, c.labels, registry=registry), limit)
            for c in self.cfg.counters]
        self._histograms = [
            _Metric(h, Histogram(h.name, h.help, h.labels, registry=registry, buckets=h.buckets),
                    limit)
            for h in self.cfg.histograms]
        host, _, port = self.cfg.address.rpartition(":")
        try:
            server = HealthServer(host.strip("[]"), int(port), registry=registry,
                                  readiness=lambda: (True, {"ready": True}),
                                  name="prometheus-sink-http")
        except OSError as exc:
            raise RetryableError(
                f"prometheus sink cannot serve on {self.cfg.address}: {exc} (each process "
                "binds its own address: run this sink with workers: 1)") from exc
        server.start()
        self._server = server
        self.port = server.address[1]
        log.info("Serving /metrics.", address=f"{host}:{self.port}")
        if not is_loopback(host.strip("[]")):
            log.warning("Serving /metrics beyond this machine; it carries no authentication.",
                        address=self.cfg.address)

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        self.time_left(deadline)
        if self._server is None:
            self.open()
        counts: dict[tuple[int, tuple[str, ...]], int] = {}
        window = self.cfg.dedupe_window_records
        for r in batch.records:
            if window:
                if r.id in self._ids:
                    continue
                self._remember(r.id, window)
            data = r.data
            for i, m in enumerate(self._counters):
                key = (i, tuple(_label(data.get(f)) for f in m.spec.labels))
                counts[key] = counts.get(key, 0) + 1
            for m in self._histograms:
                value = _number(data.get(m.spec.field))  # type: ignore[attr-defined]
                if value is not None:
                    labels = tuple(_label(data.get(f)) for f in m.spec.labels)
                    m.child(labels).observe(value * m.spec.scale)  # type: ignore[attr-defined]
        for (i, labels), n in counts.items():
            self._counters[i].child(labels).inc(n)
        return Verdict.OK

    def _remember(self, record_id: str, window: int) -> None:
        self._ids.add(record_id)
        self._order.append(record_id)
        if len(self._order) > window:
            self._ids.discard(self._order.popleft())

    def health_check(self, *, deadline: float) -> None:
        self.time_left(deadline)
        if self._server is None or not self._server.thread.is_alive():
            raise RetryableError("prometheus sink is not serving its metrics endpoint")

    def close(self, timeout_s: float = 5.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()


def _label(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return time_text(value)
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
