"""HTTP endpoints that bounded clients cannot exhaust (issue 10, finding 6).

The daemon runs under ``prlimit --nofile=1024`` (systemd's usual soft limit)
while this test holds 2,000 idle connections against its health port; the
endpoints stay loopback-only unless ``health_allow_remote`` says otherwise.
Holding 2,000 sockets needs a file limit above 2,000 in the test process:
root (as CI runs) can raise it; elsewhere the test is skipped when the hard
limit is lower.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.testing import (
    Daemon,
    Producers,
    RedisServer,
    account,
    clean_environ,
    console_script,
    http_get,
    producer_ids,
    stream_record_count,
    tally_stream,
    wait_until,
    write_config,
)

IDLE = 2_000


@pytest.fixture
def many_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = IDLE + 1_000
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise it
        except (ValueError, OSError):
            pytest.skip(f"needs {want} file descriptors (hard limit {hard}); run as root")
    elif soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _idle_connections(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send nothing (connecting in the background)."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((host, port))
        socks.append(s)
    return socks


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_idle_connections_do_not_starve_the_daemon(tmp_path: Path, many_fds: None,
                                                   redis_server: RedisServer) -> None:
    daemon = Daemon.write(tmp_path, redis_server.url)
    daemon.argv = ["prlimit", "--nofile=1024:1024", *daemon.argv]
    host, port = daemon.address.rsplit(":", 1)
    socks: list[socket.socket] = []
    try:
        daemon.start()
        socks = _idle_connections(host, int(port), IDLE)
        # every one of them reaches the server (accepted, or closed by it for a newer one)
        code, body = http_get(daemon.url("/readyz"), timeout=10)
        assert code == 200, body
        # a producer that starts now: the daemon can still list, open and drain its ring
        Producers.ring(tmp_path / "rings", 1, 3_000).start().join()
        client = redis_server.client()
        wait_until(lambda: stream_record_count(client) >= 3_000, 30, "3,000 records")
        acc = account(tally_stream(client), producer_ids(1, 3_000))
        assert acc.ok, acc
        code, _ = http_get(daemon.url("/metrics"), timeout=10)
        assert code == 200
        # half go away with a reset, half with a FIN: nothing to log about either
        for i, s in enumerate(socks):
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        socks = []
        assert http_get(daemon.url("/readyz"), timeout=10)[0] == 200
        assert daemon.stop() == 0
    finally:
        for s in socks:
            s.close()
        daemon.close()
    log = daemon.log_text()
    for word in ("BrokenPipe", "Broken pipe", "ConnectionReset", "Too many open files",
                 "Traceback"):
        assert word not in log, log[-3000:]


def test_a_request_that_never_ends_is_cut_off(tmp_path: Path, redis_server: RedisServer) -> None:
    """A client that sends half a request and stalls is closed by the server
    (the read timeout); one that asks for too much gets nothing."""
    daemon = Daemon.write(tmp_path, redis_server.url).start()
    host, port = daemon.address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            slow.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
            assert _answer(slow) == b""  # closed by the server, not by this client's timeout
        with socket.create_connection((host, int(port)), timeout=30) as big:
            big.sendall(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")
            assert _answer(big) == b""
        assert http_get(daemon.url("/healthz"))[0] == 200
    finally:
        daemon.close()


def _answer(s: socket.socket) -> bytes:
    try:
        return s.recv(100)
    except ConnectionResetError:
        return b""


def test_remote_health_address_only_when_allowed(tmp_path: Path) -> None:
    def check(name: str, *args: str, **keys: object) -> tuple[int, str]:
        cfg = tmp_path / f"{name}-{len(keys)}.yaml"
        write_config(cfg, keys)
        res = subprocess.run([*console_script(name), "--config", str(cfg), "--check", *args],
                             capture_output=True, text=True, timeout=60,
                             env=clean_environ())
        return res.returncode, res.stdout + res.stderr

    pumps = {"pumps": {"null": {}}}
    code, out = check("collector-daemon", health_address="0.0.0.0:7071")
    assert code == 2 and "health_allow_remote" in out and "no authentication" in out, out
    code, out = check("collector-pump", health_address="0.0.0.0:7070", **pumps)
    assert code == 2 and "health_allow_remote" in out, out
    code, out = check("collector-daemon", health_address="0.0.0.0:7071", health_allow_remote=True)
    assert code == 0 and "no authentication" in out, out
    code, out = check("collector-pump", health_address="[::]:7070", health_allow_remote=True,
                      **pumps)
    assert code == 0 and "no authentication" in out, out
    # iam-pump's file: its 0.0.0.0 and ":9090" become loopback, with a warning each
    iam = tmp_path / "iam-pump.yaml"
    iam.write_text("health-check-address: 0.0.0.0:7070\npumps:\n  prometheus:\n"
                   "    type: prometheus\n    meta:\n      listen_address: \":9090\"\n")
    res = subprocess.run([*console_script("collector-pump"), "--config", str(iam), "--check"],
                         capture_output=True, text=True, timeout=60, env=clean_environ())
    assert res.returncode == 0, res.stderr
    assert "serving them on 127.0.0.1:7070" in res.stderr
    assert "serving it on 127.0.0.1:9090" in res.stderr
    for loopback in ("127.0.0.2:7071", "localhost:7071", "[::1]:7071"):
        code, out = check("collector-daemon", health_address=loopback)
        assert code == 0 and "no authentication" not in out, out


def test_a_large_metrics_body_arrives_whole() -> None:
    """A body larger than the transport's write buffer is flushed before the close."""
    from prometheus_client import CollectorRegistry, Gauge

    from collector.common.health import HealthServer

    registry = CollectorRegistry()
    gauge = Gauge("n10_big", "many label sets", ["label"], registry=registry)
    for i in range(5_000):
        gauge.labels(f"value-{i:05d}").set(i)
    server = HealthServer("127.0.0.1", 0, readiness=lambda: (True, {}), registry=registry)
    server.start()
    try:
        code, body = http_get(f"http://127.0.0.1:{server.address[1]}/metrics", timeout=10)
    finally:
        server.stop()
    assert code == 200 and len(body) > 150_000
    assert body.count(b"\nn10_big{") == 5_000
