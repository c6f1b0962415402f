"""The ``syslog`` sink against real UDP, TCP and unix datagram receivers parsing RFC 5424."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from collector.testing import SilentTcpServer, SyslogPeer, free_port, wait_until
from pump.sinks import Batch, PermanentError, Record, RetryableError, Verdict, build_sink


@pytest.fixture(params=["udp", "tcp", "unix"])
def syslog_peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SyslogPeer]:
    peer = SyslogPeer(request.param, tmp_path).start()
    try:
        yield peer
    finally:
        peer.stop()


def _batch(lo: int, hi: int, pad: int = 0) -> Batch:
    return Batch([Record(f"ring:{i}", {"username": "ü", "effect": "allow", "seq": i,
                                       "pad": "x" * pad}) for i in range(lo, hi)])


def test_every_record_is_one_rfc5424_message(syslog_peer: SyslogPeer) -> None:
    sink = build_sink("syslog", {"transport": syslog_peer.transport,
                                 "address": syslog_peer.address, "facility": "local3",
                                 "severity": "notice", "app_name": "pump", "hostname": "h1"})
    sink.open()
    try:
        for lo in range(0, 200, 50):
            assert sink.write(_batch(lo, lo + 50), deadline=time.monotonic() + 5) is Verdict.OK
        sink.health_check(deadline=time.monotonic() + 5)
        wait_until(lambda: len(syslog_peer.messages) >= 200, 10, "200 syslog messages")
    finally:
        sink.close()
        sink.close()
    ids = syslog_peer.ids()
    lost = {f"ring:{i}" for i in range(200)} - set(ids)
    dups = sum(n - 1 for n in ids.values() if n > 1)
    assert (lost, dups) == (set(), 0), f"lost={sorted(lost)[:10]} duplicated={dups}"
    m = syslog_peer.messages[0]
    assert m["pri"] == 19 * 8 + 5
    assert (m["host"], m["app"], m["procid"], m["msgid"], m["sd"]) == (
        "h1", "pump", str(os.getpid()), "analytics", "-")
    assert m["ts"].endswith("Z") and "T" in m["ts"]
    assert m["msg"]["username"] == "ü"


def test_tcp_receiver_that_stops_reading_times_out_the_write() -> None:
    silent = SilentTcpServer()
    sink = build_sink("syslog", {"transport": "tcp", "address": silent.address})
    try:
        sink.open()
        with pytest.raises(RetryableError, match="timed out"):
            for _ in range(50):  # fill the socket buffers; the send then blocks
                sink.write(_batch(0, 200, pad=2000), deadline=time.monotonic() + 0.3)
    finally:
        sink.close()
        silent.stop()


def test_oversized_datagram_is_permanent(tmp_path: Path) -> None:
    peer = SyslogPeer("udp").start()
    sink = build_sink("syslog", {"address": peer.address, "max_datagram_bytes": 1000})
    try:
        with pytest.raises(PermanentError, match="max_datagram_bytes"):
            sink.write(_batch(0, 1, pad=2000), deadline=time.monotonic() + 5)
    finally:
        sink.close()
        peer.stop()


def test_no_receiver_is_retryable(tmp_path: Path) -> None:
    tcp = build_sink("syslog", {"transport": "tcp", "address": f"127.0.0.1:{free_port()}"})
    with pytest.raises(RetryableError, match="cannot connect"):
        tcp.write(_batch(0, 1), deadline=time.monotonic() + 2)
    unix = build_sink("syslog", {"transport": "unix", "address": str(tmp_path / "none.sock")})
    with pytest.raises(RetryableError):
        unix.health_check(deadline=time.monotonic() + 2)
    tcp.close()
    unix.close()


def test_tcp_peer_gone_fails_health_check_then_reconnects(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    sink = build_sink("syslog", {"transport": "tcp",
                                 "address": f"127.0.0.1:{listener.getsockname()[1]}"})
    try:
        sink.open()
        conn, _ = listener.accept()
        conn.close()  # the server hangs up
        with pytest.raises(RetryableError, match="closed"):
            sink.health_check(deadline=time.monotonic() + 2)
        sink.health_check(deadline=time.monotonic() + 2)  # reconnected
    finally:
        sink.close()
        listener.close()


def test_bad_meta_names_the_key() -> None:
    with pytest.raises(ValidationError, match="facility"):
        build_sink("syslog", {"facility": "local9"})
    with pytest.raises(ValidationError, match="host:port"):
        build_sink("syslog", {"transport": "tcp", "address": "nohost"})
    with pytest.raises(ValidationError, match="app_name"):
        build_sink("syslog", {"app_name": "has space"})
