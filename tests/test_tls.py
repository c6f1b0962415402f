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

import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from . import _daemon_helpers as H
from ._support import free_port, wait_until
from .pump_plugins import http_get, start_pump, write_config

PASSWORD = "tls-s3cret-pw"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}", cwd=d)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """(rediss URL without options, CA file, another CA's file) of a TLS-only redis-server."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (sh .ci/setup installs it)")
    d = tmp_path / "tls"
    d.mkdir()
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
             "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
             cwd=d)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
         "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", str(d), "--logfile", str(d / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(f"{url}?ssl_ca_certs={d / 'ca.crt'}&ssl_cert_reqs=required",
                                  password=PASSWORD, socket_timeout=2)

    def up() -> bool:
        assert proc.poll() is None, (d / "redis.log").read_text()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(up, 15, "redis-server on its TLS port")
        yield url, d / "ca.crt", d / "other-ca.crt"
    finally:
        proc.kill()
        proc.wait(10)


def test_daemon_and_pump_over_tls_with_a_password(
        tmp_path: Path, rings_dir: Path, tls_redis: tuple[str, Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    base, ca, _ = tls_redis
    url = f"{base}?ssl_ca_certs={ca}&ssl_cert_reqs=required"
    n, count = 2, 5_000
    daemon = H.Daemon(H.base_config(tmp_path, url, rings_dir), tmp_path / "daemon.log",
                      env={"COLLECTOR_REDIS_PASSWORD": PASSWORD})
    out = tmp_path / "out" / "analytics.jsonl"
    port = free_port()
    pump_yaml = write_config(tmp_path / "pump.yaml", **{
        "redis_url": url, "read_block_s": 0.1, "health_address": f"127.0.0.1:{port}",
        "pumps": {"file": {"type": "file", "workers": 1,
                           "meta": {"path": str(out), "format": "jsonl", "fsync": "batch"}}},
    })
    monkeypatch.setenv("COLLECTOR_PUMP_REDIS_PASSWORD", PASSWORD)
    pump = start_pump(pump_yaml, tmp_path / "pump.log")
    daemon.start()
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz", 2)[0] == 200, 60,
                   "the pump's /healthz")
        H.join_all(H.start_producers(rings_dir, n, count))

        def lines() -> int:
            return out.read_bytes().count(b"\n") if out.exists() else 0

        wait_until(lambda: lines() >= n * count, 120, "every record in the file sink")
        seen: Counter[tuple[int, int]] = Counter()
        for line in out.read_bytes().splitlines():
            rec = json.loads(line)
            rec.pop("_id")
            assert rec == H.make_record(rec["producer"], rec["seq"])
            seen[(rec["producer"], rec["seq"])] += 1
        lost, dup, unexpected = H.lost_and_duplicated(seen, n, count)
        print(f"over TLS: sent={n * count} delivered={sum(seen.values())} lost={lost} "
              f"duplicated={dup}")
        assert (lost, dup, unexpected) == (0, 0, 0)
    finally:
        daemon.stop()
        pump.terminate()
        pump.wait(30)
    for log in (tmp_path / "daemon.log", tmp_path / "pump.log"):
        assert PASSWORD not in log.read_text(errors="replace")


def test_a_server_certificate_from_another_ca_is_refused(
        tmp_path: Path, rings_dir: Path, tls_redis: tuple[str, Path, Path]) -> None:
    base, _, other_ca = tls_redis
    url = f"{base}?ssl_ca_certs={other_ca}&ssl_cert_reqs=required"
    daemon = H.Daemon(H.base_config(tmp_path, url, rings_dir, startup_redis_wait_s=1),
                      tmp_path / "daemon.log", env={"COLLECTOR_REDIS_PASSWORD": PASSWORD})
    daemon.start(wait_ready=False)
    assert daemon.wait(60) == 3  # Redis unreachable
    log = daemon.log_text()
    assert "certificate verify failed" in log
    assert PASSWORD not in log
