"""The ``http`` sink (httpx) against a real local HTTP server in a thread."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from collector.testing import HttpPeer, free_port
from pump.sinks import Batch, PermanentError, Record, RetryableError, Verdict, build_sink


@pytest.fixture
def http_peer() -> Iterator[HttpPeer]:
    peer = HttpPeer().start()
    try:
        yield peer
    finally:
        peer.stop()


def _batch(lo: int, hi: int) -> Batch:
    return Batch([Record(f"ring:{i}", {"seq": i, "effect": "allow"}) for i in range(lo, hi)])


def test_posts_json_batches_with_headers(http_peer: HttpPeer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUMP_TEST_TOKEN", "Bearer t0ken")
    sink = build_sink("http", {"url": http_peer.url, "headers": {"X-Source": "pump"},
                               "auth_env": "PUMP_TEST_TOKEN"})
    sink.open()
    try:
        for lo in range(0, 300, 100):
            assert sink.write(_batch(lo, lo + 100), deadline=time.monotonic() + 5) is Verdict.OK
        sink.health_check(deadline=time.monotonic() + 5)
    finally:
        sink.close()
        sink.close()
    lost = {f"ring:{i}" for i in range(300)} - set(http_peer.ids)
    dups = sum(n - 1 for n in http_peer.ids.values())
    assert (lost, dups) == (set(), 0), f"lost={sorted(lost)[:10]} duplicated={dups}"
    assert http_peer.last_headers["X-Source"] == "pump"
    assert http_peer.last_headers["Authorization"] == "Bearer t0ken"
    assert http_peer.last_headers["Content-Type"] == "application/json"


def test_status_classification(http_peer: HttpPeer) -> None:
    sink = build_sink("http", {"url": http_peer.url})
    sink.open()
    try:
        http_peer.mode = "503"
        with pytest.raises(RetryableError, match="503"):
            sink.write(_batch(0, 2), deadline=time.monotonic() + 5)
        http_peer.mode = "429"
        with pytest.raises(RetryableError, match="429"):
            sink.write(_batch(0, 2), deadline=time.monotonic() + 5)
        http_peer.mode = "400"
        with pytest.raises(PermanentError, match="400"):
            sink.write(_batch(0, 2), deadline=time.monotonic() + 5)
        http_peer.mode = "ok"
        assert sink.write(_batch(0, 2), deadline=time.monotonic() + 5) is Verdict.OK
    finally:
        sink.close()


def test_retry_after_past_the_deadline_is_passed_up(http_peer: HttpPeer) -> None:
    sink = build_sink("http", {"url": http_peer.url})
    sink.open()
    try:
        http_peer.mode, http_peer.retry_after = "429", "120"
        with pytest.raises(RetryableError, match="Retry-After") as info:
            sink.write(_batch(0, 2), deadline=time.monotonic() + 5)
        assert info.value.retry_after_s == 120  # type: ignore[attr-defined]
        assert http_peer.requests == 1  # it did not wait two minutes
    finally:
        sink.close()


def test_retry_after_within_the_deadline_is_waited(http_peer: HttpPeer) -> None:
    sink = build_sink("http", {"url": http_peer.url})
    sink.open()
    try:
        http_peer.fail_first, http_peer.retry_after = 3, "0"
        assert sink.write(_batch(0, 2), deadline=time.monotonic() + 10) is Verdict.OK
        assert http_peer.requests >= 4
        assert set(http_peer.ids) == {"ring:0", "ring:1"}
    finally:
        sink.close()


def test_stalled_server_write_stops_at_the_deadline(http_peer: HttpPeer) -> None:
    sink = build_sink("http", {"url": http_peer.url})
    sink.open()
    try:
        http_peer.mode = "stall"  # answers only after 30 s
        with pytest.raises(RetryableError, match="deadline"):
            sink.write(_batch(0, 2), deadline=time.monotonic() + 0.3)
    finally:
        sink.close()


def test_unreachable_and_missing_auth_env(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = build_sink("http", {"url": f"http://127.0.0.1:{free_port()}/x"})
    with pytest.raises(RetryableError, match="cannot reach"):
        sink.write(_batch(0, 1), deadline=time.monotonic() + 2)
    with pytest.raises(RetryableError, match="cannot connect"):
        sink.health_check(deadline=time.monotonic() + 2)
    sink.close()
    monkeypatch.delenv("PUMP_TEST_MISSING", raising=False)
    with pytest.raises(ValidationError, match="PUMP_TEST_MISSING"):  # refused at load
        build_sink("http", {"url": "http://127.0.0.1:1/", "auth_env": "PUMP_TEST_MISSING"})


def test_bad_meta_names_the_key() -> None:
    with pytest.raises(ValidationError, match="url"):
        build_sink("http", {"url": "ftp://x"})
    with pytest.raises(ValidationError, match="url"):
        build_sink("http", {})
    with pytest.raises(ValidationError, match="headers"):
        build_sink("http", {"url": "http://x/", "headers": ["a"]})
