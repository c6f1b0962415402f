"""The elasticsearch sink: the real ``elasticsearch`` client against ``EsPeer``.

No Elasticsearch or OpenSearch server can be installed on this machine:
``collector.testing.EsPeer`` is a small wire-level peer speaking the REST
API's ``GET /`` and ``_bulk`` request and response formats as the
Elasticsearch reference gives them (per-item statuses and errors, 429s,
dynamic mapping conflicts as ``document_parsing_exception``). What is
tested here is the sink and the client's behaviour on that wire: index
names from the record's date, the record id as ``_id`` (a redelivery
overwrites), times as ISO 8601 with ``Z``, the pipeline, per-item errors
classified (429 retryable, a mapping conflict rejecting that record alone),
and API key and basic authentication headers.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest

from collector.testing import EsPeer
from pump.sinks import Batch, PermanentError, Record, RetryableError, build_sink
from pump.sinks._values import Timestamp

DAY = 86400


def _records(n: int) -> list[Record]:
    return [Record(f"ring:{i}", {"timestamp": 1_700_000_000 + i * DAY // 4, "latency_ms": 0.5 + i,
                                 "username": "alice", "at": datetime(2026, 1, 2, tzinfo=UTC)})
            for i in range(n)]


def test_documents_by_day_with_the_record_id_and_iso_times() -> None:
    with EsPeer() as peer:
        sink = build_sink("elasticsearch", {"hosts": [peer.url], "pipeline": "geoip",
                                            "chunk_size": 3})
        sink.open()
        records = _records(10)
        records[0].data["timestamp"] = Timestamp.from_unix(1_700_000_000, 5)
        try:
            sink.write(Batch(records), deadline=time.monotonic() + 10)
            sink.write(Batch(records), deadline=time.monotonic() + 10)  # a redelivery
            sink.health_check(deadline=time.monotonic() + 5)
        finally:
            sink.close()
        assert sorted(peer.docs) == ["analytics-2023.11.14", "analytics-2023.11.15",
                                     "analytics-2023.11.16", "analytics-2023.11.17"]
        assert peer.ids() == {r.id: 1 for r in records}  # overwritten, not doubled
        assert all(n == 2 for n in peer.applied.values())
        assert peer.pipelines["geoip"] == 20
        assert len(peer.requests) == 8  # chunks of 3
        doc = peer.docs["analytics-2023.11.14"]["ring:0"]
        assert doc["@timestamp"] == "2023-11-14T22:13:20.000000005Z"
        assert doc["at"] == "2026-01-02T00:00:00Z" and doc["latency_ms"] == 0.5
        assert peer.docs["analytics-2023.11.15"]["ring:4"]["@timestamp"] == "2023-11-15T22:13:20Z"


def test_a_mapping_conflict_rejects_that_record_and_429s_are_retried() -> None:
    with EsPeer() as peer:
        sink = build_sink("elasticsearch", {"hosts": [peer.url], "index": "a-%Y"})
        records = _records(20)
        try:
            sink.write(Batch(records[:5]), deadline=time.monotonic() + 10)  # latency_ms: float
            records[11].data["latency_ms"] = "slow"
            records[12].data["timestamp"] = "not a time"
            with pytest.raises(PermanentError) as info:
                sink.write(Batch(records), deadline=time.monotonic() + 10)
            assert set(info.value.rejected) == {"ring:11", "ring:12"}
            assert "document_parsing_exception" in info.value.rejected["ring:11"]
            assert set(peer.ids()) == {r.id for r in records} - {"ring:11", "ring:12"}

            peer.reject_items = 4
            good = records[:10]
            with pytest.raises(RetryableError, match="4 document"):
                sink.write(Batch(good), deadline=time.monotonic() + 10)
            peer.reject_requests = 1
            with pytest.raises(RetryableError, match="429"):
                sink.write(Batch(good), deadline=time.monotonic() + 10)
            sink.write(Batch(good), deadline=time.monotonic() + 10)  # the retry
        finally:
            sink.close()
        assert set(peer.ids()) == {r.id for r in records} - {"ring:11", "ring:12"}
        assert max(peer.ids().values()) == 1


def test_api_key_and_basic_auth() -> None:
    key = base64.b64encode(b"kid:ksecret").decode()
    with EsPeer(api_key=key) as peer:
        sink = build_sink("elasticsearch", {"hosts": [peer.url], "api_key": "kid:ksecret"})
        assert "ksecret" not in repr(sink.config)
        sink.write(Batch(_records(2)), deadline=time.monotonic() + 10)
        sink.close()
        assert peer.requests[-1][2] == f"ApiKey {key}"
        wrong = build_sink("elasticsearch", {"hosts": [peer.url], "api_key": "kid:nope"})
        with pytest.raises(PermanentError, match="401"):
            wrong.write(Batch(_records(2)), deadline=time.monotonic() + 10)
        with pytest.raises(RetryableError, match=r"401|Authentication"):
            wrong.health_check(deadline=time.monotonic() + 10)
        wrong.close()
    with EsPeer(basic=("elastic", "pw-1")) as peer:
        sink = build_sink("elasticsearch", {"hosts": [peer.url], "username": "elastic",
                                            "password": "pw-1"})
        sink.write(Batch(_records(2)), deadline=time.monotonic() + 10)
        sink.close()
        assert len(peer.ids()) == 2
