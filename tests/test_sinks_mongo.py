"""The ``mongo`` sink with the real pymongo driver against a MongoDB wire-protocol peer.

``mongod`` cannot be installed on this machine, so these tests run pymongo
against ``mockupdb`` (``collector.testing.MongoPeer``): an in-process server
speaking the real MongoDB wire protocol (OP_MSG) that stores inserted
documents and answers duplicate ``_id`` values with write errors code 11000,
as mongod does. What they cannot show: mongod's own behaviour (capped
collection eviction, real authentication, TLS handshakes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from collector.testing import MongoPeer
from pump.sinks import Batch, PermanentError, Record, RetryableError, Verdict, build_sink


@pytest.fixture
def mongo_peer() -> Iterator[MongoPeer]:
    peer = MongoPeer().start()
    try:
        yield peer
    finally:
        peer.stop()


def _batch(lo: int, hi: int) -> Batch:
    return Batch([Record(f"ring:{i}", {"timestamp": 1700000000 + i, "username": f"u{i % 3}",
                                       "effect": "allow", "seq": i}) for i in range(lo, hi)])


def _sink(peer: MongoPeer, **meta: object):
    sink = build_sink("mongo", {"uri": peer.uri, "database": "iam", "collection": "analytics",
                                "connect_timeout_s": 3, **meta})
    sink.open()
    return sink


def test_insert_and_redelivery_count_each_record_once(mongo_peer: MongoPeer) -> None:
    sink = _sink(mongo_peer)
    try:
        assert sink.write(_batch(0, 100), deadline=time.monotonic() + 10) is Verdict.OK
        # redelivery overlapping the first batch: duplicates are success, new ones are stored
        assert sink.write(_batch(50, 150), deadline=time.monotonic() + 10) is Verdict.OK
        stored = mongo_peer.stored("iam", "analytics")
        seqs = sorted(doc["seq"] for doc in stored.values())
        lost = set(range(150)) - set(seqs)
        dups = len(seqs) - len(set(seqs))
        assert (lost, dups) == (set(), 0), f"lost={sorted(lost)[:10]} duplicated={dups}"
        assert stored["ring:7"]["username"] == "u1"
        # the deadline reaches the server as maxTimeMS, so mongod stops the write too
        assert mongo_peer.last_max_time_ms is not None
        assert 0 < mongo_peer.last_max_time_ms <= 10_000
    finally:
        sink.close()
        sink.close()


def test_other_write_errors_are_permanent(mongo_peer: MongoPeer) -> None:
    sink = _sink(mongo_peer)
    try:
        mongo_peer.fail_with = {"ok": 1, "n": 0, "writeErrors": [
            {"index": 0, "code": 121, "errmsg": "Document failed validation"}]}
        with pytest.raises(PermanentError, match="code 121"):
            sink.write(_batch(0, 3), deadline=time.monotonic() + 10)
        mongo_peer.fail_with = {"ok": 0, "code": 10107, "errmsg": "not primary"}
        with pytest.raises(RetryableError, match="not primary"):
            sink.write(_batch(0, 3), deadline=time.monotonic() + 10)
        mongo_peer.fail_with = {"ok": 0, "code": 13, "errmsg": "not authorized"}
        with pytest.raises(PermanentError, match="not authorized"):
            sink.write(_batch(0, 3), deadline=time.monotonic() + 10)
    finally:
        sink.close()


def test_stalled_server_write_times_out_retryable(mongo_peer: MongoPeer) -> None:
    sink = _sink(mongo_peer)
    try:
        sink.health_check(deadline=time.monotonic() + 5)
        mongo_peer.stall.set()  # inserts are read and never answered
        with pytest.raises(RetryableError):
            sink.write(_batch(0, 10), deadline=time.monotonic() + 0.5)
    finally:
        mongo_peer.stall.clear()
        sink.close()


def test_unreachable_server_is_retryable() -> None:
    from collector.testing import free_port

    sink = build_sink("mongo", {"uri": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"})
    try:
        with pytest.raises(RetryableError):
            sink.write(_batch(0, 1), deadline=time.monotonic() + 0.5)
        with pytest.raises(RetryableError):
            sink.health_check(deadline=time.monotonic() + 0.3)
    finally:
        sink.close()


def test_capped_collection_created_when_absent(mongo_peer: MongoPeer) -> None:
    sink = _sink(mongo_peer, collection="capped", capped_size_bytes=1 << 20,
                 capped_max_documents=1000)
    sink.close()
    assert mongo_peer.options[("iam", "capped")] == {"capped": True, "size": 1 << 20,
                                                     "max": 1000}
    again = _sink(mongo_peer, collection="capped", capped_size_bytes=1 << 20)  # exists: no-op
    again.close()


def test_password_from_env_is_not_in_errors(mongo_peer: MongoPeer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_MONGO_PASSWORD", "s3cret-pw")
    sink = build_sink("mongo", {"uri": "mongodb://127.0.0.1:1/?directConnection=true",
                                "username": "pump", "auth_source": "admin"})
    try:
        with pytest.raises(RetryableError) as info:
            sink.write(_batch(0, 1), deadline=time.monotonic() + 0.3)
        assert "s3cret-pw" not in str(info.value)
    finally:
        sink.close()


def test_bad_meta_names_the_key() -> None:
    with pytest.raises(ValidationError, match="uri"):
        build_sink("mongo", {"uri": "http://x"})
    with pytest.raises(ValidationError, match="colection"):
        build_sink("mongo", {"colection": "x"})


# mockupdb's TLS server uses ssl.wrap_socket (deprecated), and its accept thread raises
# when the strict client refuses the handshake: both are the peer's, not the sink's.
@pytest.mark.filterwarnings("ignore::DeprecationWarning",
                            "ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_tls_options_reach_the_driver() -> None:
    """mockupdb's TLS mode: its bundled certificate is self-signed for CN=server."""
    import os

    import mockupdb

    pem = os.path.join(os.path.dirname(mockupdb.__file__), "server.pem")
    peer = MongoPeer(tls=True).start()
    try:
        ok = [{"tls": True, "tls_allow_invalid_certificates": True},
              {"tls": True, "tls_ca_file": pem, "tls_allow_invalid_hostnames": True}]
        for meta in ok:
            sink = _sink(peer, **meta)
            try:
                assert sink.write(_batch(0, 5), deadline=time.monotonic() + 5) is Verdict.OK
            finally:
                sink.close()
        # the CA file is used: the chain verifies and only the host name is refused
        strict = build_sink("mongo", {"uri": peer.uri, "tls": True, "tls_ca_file": pem,
                                      "connect_timeout_s": 1})
        with pytest.raises(RetryableError, match="Hostname mismatch"):
            strict.open()
        strict.close()
    finally:
        peer.stop()
    assert len(peer.stored("iam", "analytics")) == 5
