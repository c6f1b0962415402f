"""The ``prometheus`` sink, checked by scraping its own /metrics endpoint over HTTP."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from pump.sinks import Batch, Record, RetryableError, Verdict, build_sink


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _batch(lo: int, hi: int) -> Batch:
    return Batch([Record(f"ring:{i}", {"effect": "deny" if i % 4 == 0 else "allow",
                                       "username": f"u{i % 2}", "latency_ms": i % 10})
                  for i in range(lo, hi)])


def test_counters_and_histograms_from_record_fields() -> None:
    sink = build_sink("prometheus", {
        "address": "127.0.0.1:0",
        "histograms": [{"name": "req_latency_seconds", "field": "latency_ms", "scale": 0.001,
                        "labels": ["effect"], "buckets": [0.002, 0.005, 0.01]}],
    })
    sink.open()
    try:
        assert sink.write(_batch(0, 100), deadline=time.monotonic() + 5) is Verdict.OK
        # redelivery within the process is ignored
        assert sink.write(_batch(50, 100), deadline=time.monotonic() + 5) is Verdict.OK
        sink.health_check(deadline=time.monotonic() + 5)
        m = _scrape(sink.port)
    finally:
        sink.close()
        sink.close()
    total = "collector_decisions_total"
    assert m[(total, (("effect", "deny"), ("username", "u0")))] == 25
    assert m[(total, (("effect", "allow"), ("username", "u0")))] == 25
    assert m[(total, (("effect", "allow"), ("username", "u1")))] == 50
    assert (total, (("effect", "deny"), ("username", "u1"))) not in m
    assert m[("req_latency_seconds_count", (("effect", "allow"),))] == 75
    assert m[("req_latency_seconds_bucket", (("effect", "allow"), ("le", "0.002")))] == 20


def test_label_sets_are_capped() -> None:
    sink = build_sink("prometheus", {"address": "127.0.0.1:0", "max_label_sets": 2,
                                     "counters": [{"name": "by_user_total",
                                                   "labels": ["username"]}]})
    sink.open()
    try:
        sink.write(Batch([Record(str(i), {"username": f"user{i}"}) for i in range(5)]),
                   deadline=time.monotonic() + 5)
        m = _scrape(sink.port)
    finally:
        sink.close()
    users = {labels[0][1]: v for (name, labels), v in m.items() if name == "by_user_total"}
    assert users == {"user0": 1, "user1": 1, "__other__": 3}


def test_address_in_use_is_retryable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sink = build_sink("prometheus", {"address": f"127.0.0.1:{port}"})
        with pytest.raises(RetryableError, match="workers: 1"):
            sink.open()
        with pytest.raises(RetryableError):
            sink.health_check(deadline=time.monotonic() + 1)
        sink.close()


def test_bad_meta_names_the_key() -> None:
    with pytest.raises(ValidationError, match="name"):
        build_sink("prometheus", {"counters": [{"name": "bad-name"}]})
    with pytest.raises(ValidationError, match="unique"):
        build_sink("prometheus", {"counters": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValidationError, match="field"):
        build_sink("prometheus", {"histograms": [{"name": "h"}]})
    with pytest.raises(ValidationError, match="lables"):
        build_sink("prometheus", {"counters": [{"name": "a", "lables": ["x"]}]})


def test_endpoint_is_bounded_and_loopback_only() -> None:
    """The sink's /metrics is the bounded health server: idle connections beyond its
    limit do not keep a scrape out; a non-loopback address needs allow_remote."""
    with pytest.raises(ValidationError, match="allow_remote"):
        build_sink("prometheus", {"address": "0.0.0.0:9464"})
    build_sink("prometheus", {"address": "0.0.0.0:9464", "allow_remote": True})  # not opened
    sink = build_sink("prometheus", {"address": "127.0.0.1:0"})
    sink.open()
    idle = []
    try:
        for _ in range(200):  # more than the server keeps open
            idle.append(socket.create_connection(("127.0.0.1", sink.port), timeout=5))
        sink.write(_batch(0, 10), deadline=time.monotonic() + 5)
        assert sum(v for (name, _), v in _scrape(sink.port).items()
                   if name == "collector_decisions_total") == 10
        sink.health_check(deadline=time.monotonic() + 5)
    finally:
        for s in idle:
            s.close()
        sink.close()
    with pytest.raises(RetryableError):
        sink.health_check(deadline=time.monotonic() + 5)
