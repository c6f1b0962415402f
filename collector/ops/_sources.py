"""Where ``collector`` reads from: the two configs, the services' endpoints, Redis.

Nothing here needs more privileges than the services themselves: the
daemon's and the pump's own HTTP endpoints (``/readyz``, ``/metrics`` on
their ``health_address``), the Redis they use (read-only commands), and the
rings directory read with :class:`ringbuf.RingProbe` (``pread``, never
mapped).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from collector.common.settings import deprecations
from collector.config import CollectorConfig
from collector.config import load_config as load_daemon_config
from pump.config import PumpConfig
from pump.config import load_config as load_pump_config

__all__ = ["Endpoint", "Metrics", "Unreachable", "fetch_endpoint", "load_configs"]


class Unreachable(Exception):
    """A service's endpoint or Redis did not answer."""


def load_configs(daemon_file: str | None, pump_file: str | None
                 ) -> tuple[CollectorConfig, PumpConfig]:
    """Both services' configs as the services load them (file, then environment).

    Raises :class:`collector.common.settings.ConfigError` naming the file or
    variable, the key and the rule. Renamed keys are accepted silently here
    (``collector config check`` reports them).
    """
    with deprecations():
        daemon = load_daemon_config(daemon_file)
        pump = load_pump_config(pump_file)
    return daemon, pump


class Metrics:
    """Samples of one ``/metrics`` scrape: ``get(name, **labels)`` sums the matches."""

    def __init__(self, text: str = "") -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                self.samples.append((s.name, dict(s.labels), float(s.value)))

    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def get(self, name: str, **labels: str) -> float:
        return sum(v for n, lab, v in self.samples
                   if n == name and all(lab.get(k) == want for k, want in labels.items()))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for n, lab, v in self.samples:
            if n == name and label in lab:
                out[lab[label]] = out.get(lab[label], 0.0) + v
        return out


@dataclass
class Endpoint:
    """What one service's ``/readyz`` and ``/metrics`` said (or why they did not)."""

    address: str
    reachable: bool = False
    ready: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    error: str | None = None


def _get(url: str, timeout_s: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:  # 503 from /readyz still carries the detail
        return exc.code, exc.read()
    except (OSError, ValueError) as exc:
        raise Unreachable(f"{url}: {getattr(exc, 'reason', None) or exc}") from exc


def fetch_metrics(address: str, timeout_s: float) -> Metrics:
    code, body = _get(f"http://{address}/metrics", timeout_s)
    if code != 200:
        raise Unreachable(f"http://{address}/metrics answered {code}")
    return Metrics(body.decode("utf-8", "replace"))


def fetch_endpoint(address: str, timeout_s: float) -> Endpoint:
    """``/readyz`` and ``/metrics`` of the service listening on ``address``."""
    ep = Endpoint(address)
    try:
        code, body = _get(f"http://{address}/readyz", timeout_s)
        ep.metrics = fetch_metrics(address, timeout_s)
    except Unreachable as exc:
        ep.error = str(exc)
        return ep
    ep.reachable = True
    ep.ready = code == 200
    try:
        ep.detail = json.loads(body)
    except ValueError:
        ep.detail = {}
        ep.error = f"/readyz answered {code} with no JSON"
    return ep


def entry_ms(entry_id: bytes | str) -> int:
    """The Unix milliseconds of a stream entry id (when it was added)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])
