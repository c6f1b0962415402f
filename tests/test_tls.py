"""Redis over TLS (``rediss://``) with a password, end to end.

A real ``redis-server`` (Debian's build has TLS) listens on a TLS port only
(``--port 0``), with a certificate signed by a throw-away CA made here with
``openssl`` and ``requirepass``. The real ``collector-daemon`` and
``collector-pump`` reach it with ``rediss://...?ssl_ca_certs=...&ssl_cert_reqs=required``
and the password from the environment; every record is counted at the file
sink by (producer, seq). A daemon given another CA refuses the server's
certificate: it exits with code 3 and says why, and no password reaches a log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.testing import (
    Daemon,
    Producers,
    Pump,
    RedisServer,
    account,
    authz_record,
    jsonl_lines,
    jsonl_records,
    make_ca,
    make_tls_files,
    producer_ids,
    record_key,
    wait_until,
)

PASSWORD = "tls-s3cret-pw"


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    """A TLS-only, password-protected redis-server, and another CA's certificate."""
    d = tmp_path / "tls"
    server = RedisServer(d, appendonly=False, password=PASSWORD, tls=make_tls_files(d))
    other_ca = make_ca(d, "other-ca")
    with server.start():
        yield server, other_ca


def test_daemon_and_pump_over_tls_with_a_password(
        tmp_path: Path, rings_dir: Path, tls_redis: tuple[RedisServer, Path]) -> None:
    server, _ = tls_redis
    url = server.url
    assert url.startswith("rediss://") and "ssl_cert_reqs=required" in url
    n, count = 2, 5_000
    daemon = Daemon.write(tmp_path, url, env={"COLLECTOR_REDIS_PASSWORD": PASSWORD})
    out = tmp_path / "out" / "analytics.jsonl"
    pump = Pump.write(tmp_path, url, {
        "file": {"type": "file", "workers": 1,
                 "meta": {"path": str(out), "format": "jsonl", "fsync": "batch"}}},
        env={"COLLECTOR_PUMP_REDIS_PASSWORD": PASSWORD})
    pump.start(wait=False)
    daemon.start()
    try:
        pump.wait_up(60)
        Producers.ring(rings_dir, n, count).start().join()
        wait_until(lambda: jsonl_lines(out) >= n * count, 120, "every record in the file sink")
        seen: Counter[tuple[int, int]] = Counter()
        for rec in jsonl_records(out):
            rec.pop("_id")
            assert rec == authz_record(*record_key(rec))
            seen[record_key(rec)] += 1
        acc = account(seen, producer_ids(n, count))
        print(f"over TLS: sent={n * count} delivered={sum(seen.values())} {acc}")
        assert acc.ok
    finally:
        daemon.stop()
        pump.stop(30)
        pump.close()
    for log in (daemon.log, pump.log):
        assert PASSWORD not in log.read_text(errors="replace")


def test_a_server_certificate_from_another_ca_is_refused(
        tmp_path: Path, rings_dir: Path, tls_redis: tuple[RedisServer, Path]) -> None:
    server, other_ca = tls_redis
    daemon = Daemon.write(tmp_path, server.url_with_ca(other_ca), startup_redis_wait_s=1,
                          env={"COLLECTOR_REDIS_PASSWORD": PASSWORD})
    daemon.start(wait=False)
    assert daemon.wait(60) == 3  # Redis unreachable
    log = daemon.log_text()
    assert "certificate verify failed" in log
    assert PASSWORD not in log
