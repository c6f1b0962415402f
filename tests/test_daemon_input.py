"""collector-daemon facing bad input: config, Redis, ring files it must not trust."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

import ringbuf
from collector.common import redisconn
from collector.common.redact import redact_url
from collector.config import load_config
from collector.testing import (
    Daemon,
    Producers,
    RedisServer,
    account,
    clean_environ,
    console_script,
    free_port,
    producer_ids,
    stream_record_count,
    tally_stream,
    wait_until,
)


def _run_daemon(config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*console_script("collector-daemon"), "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout, env=clean_environ())


def _small_ring(rings_dir: Path, name: str) -> ringbuf.RingWriter:
    return ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 16, max_record_bytes=1024,
                                     name=name)


@pytest.mark.parametrize(("text", "expected"), [
    ("pool_size: 0\n", "pool_size: Input should be greater than or equal to 1"),
    ("batch_sise: 10\n", "batch_sise: unknown key"),
    ("redis_url: http://x\n", "redis_url: Value error, must be a redis://"),
    ("health_address: nowhere\n", "health_address: Value error, must be HOST:PORT"),
    ("pool_size: [1\n", "not valid YAML"),
    ("- a\n- b\n", "the top level must be a mapping"),
])
def test_malformed_config_exits_non_zero_naming_file_key_and_rule(
        tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    res = _run_daemon(cfg)
    assert res.returncode == 2
    assert str(cfg) in res.stderr
    assert expected in res.stderr, res.stderr


def test_unreachable_redis_at_start_exits_after_the_wait(tmp_path: Path,
                                                         rings_dir: Path) -> None:
    port = free_port()  # nothing listens there
    cfg = Daemon.write(tmp_path, f"redis://admin:s3cret-pw@127.0.0.1:{port}/0",
                       startup_redis_wait_s=1).config
    res = _run_daemon(cfg)
    assert res.returncode == 3
    assert f"redis://admin:***@127.0.0.1:{port}/0" in res.stderr
    assert "startup_redis_wait_s=1.0" in res.stderr
    assert "s3cret-pw" not in res.stderr


def test_second_daemon_on_the_same_rings_dir_is_refused(tmp_path: Path, rings_dir: Path,
                                                        redis_server: RedisServer) -> None:
    daemon = Daemon.write(tmp_path, redis_server.url).start()
    try:
        cfg2 = Daemon.write(tmp_path / "other", redis_server.url,
                            rings_dir=str(rings_dir)).config
        res = _run_daemon(cfg2)
        assert res.returncode == 2
        assert "served by another collector-daemon" in res.stderr
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_second_embedded_daemon_on_the_same_runtime_dir_is_refused(tmp_path: Path,
                                                                   rings_dir: Path) -> None:
    daemon = Daemon.write(tmp_path, None).start()
    try:
        cfg2 = Daemon.write(tmp_path / "other", None, runtime_dir=str(tmp_path / "run")).config
        res = _run_daemon(cfg2)
        assert res.returncode == 2
        assert "is used by another collector-daemon's embedded redis-server" in res.stderr
        assert daemon.ready()  # its redis-server was left alone
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_junk_ring_is_quarantined_and_others_still_served(tmp_path: Path, rings_dir: Path,
                                                          redis_server: RedisServer) -> None:
    (rings_dir / "junk.ring").write_bytes(os.urandom(10_000))
    (rings_dir / "short.ring").write_bytes(b"CLTRING\0")
    # A ring whose data area is corrupted after a valid header: found by the flusher.
    bad = _small_ring(rings_dir, "bad.ring")
    for i in range(10):
        assert bad.try_write(b"\x91" + bytes([i]))
    with open(bad.path, "r+b") as f:
        f.seek(ringbuf._layout.HEADER_SIZE)
        f.write(b"\xee" * 16)  # smash the first frame header
    daemon = Daemon.write(tmp_path, redis_server.url).start()
    try:
        Producers.ring(rings_dir, 2, 5_000).start().join()
        client = redis_server.client()
        wait_until(lambda: stream_record_count(client) >= 10_000, 30, "the good rings' records")
        acc = account(tally_stream(client), producer_ids(2, 5_000))
        print(f"junk rings: {acc}")
        assert acc.ok
        quarantine = rings_dir / "quarantine"
        wait_until(lambda: {p.name for p in quarantine.iterdir()}
                   >= {"junk.ring", "short.ring", "bad.ring"}, 30, "three files quarantined")
        assert not (rings_dir / "junk.ring").exists()
        log = wait_until(lambda: (t := daemon.log_text()).count("Quarantined a ring file") == 3
                         and t, 30, "three quarantine lines in the log")
        assert "corrupted frame" in log
        assert daemon.metrics()["collector_daemon_rings_quarantined_total"] == 3
        assert daemon.ready()
        assert daemon.stop() == 0
    finally:
        bad.abandon()
        daemon.close()


def test_rings_of_another_user_or_world_writable_are_refused(
        tmp_path: Path, rings_dir: Path, redis_server: RedisServer) -> None:
    foreign = _small_ring(rings_dir, "foreign.ring")
    open_ = _small_ring(rings_dir, "open.ring")
    for w in (foreign, open_):
        for i in range(5):
            w.try_write(b"\x91" + bytes([i]))
    if os.geteuid() == 0:
        os.chown(foreign.path, 65534, 65534)
    else:  # pragma: no cover - the CI box runs as root
        pytest.skip("chown to another user needs root")
    os.chmod(open_.path, 0o666)
    daemon = Daemon.write(tmp_path, redis_server.url).start()
    try:
        Producers.ring(rings_dir, 1, 2_000).start().join()
        client = redis_server.client()
        wait_until(lambda: stream_record_count(client) >= 2_000, 30, "the good ring's records")
        assert account(tally_stream(client), producer_ids(1, 2_000)).ok
        assert stream_record_count(client) == 2_000  # nothing from the refused rings
        log = wait_until(lambda: (t := daemon.log_text()).count("Refused a ring") >= 2 and t,
                         30, "both refusals in the log")
        assert "Refused a ring" in log and "owned by uid 65534" in log
        assert "has mode 0666" in log
        assert log.count("Refused a ring") == 2  # reported once, not every scan
        assert daemon.metrics()['collector_daemon_rings{state="refused"}'] == 2
        # Fixing the mode makes the ring acceptable again.
        os.chmod(open_.path, 0o600)
        wait_until(lambda: stream_record_count(client) >= 2_005, 30, "the fixed ring served")
        assert Path(foreign.path).exists()  # left where it was
        assert daemon.stop() == 0
    finally:
        foreign.abandon()
        open_.abandon()
        daemon.close()


def test_redis_connection_helper_urls(tmp_path: Path, redis_server: RedisServer) -> None:
    c = redisconn.connect(redis_server.url, timeout_s=1)
    assert c.ping()
    kw = c.connection_pool.connection_kwargs
    assert kw["socket_timeout"] == 1 and kw["socket_connect_timeout"] == 1
    c = redisconn.connect("rediss://u:pw@127.0.0.1:6390/0", password="other", username="me")
    assert c.connection_pool.connection_class.__name__ == "SSLConnection"
    assert c.connection_pool.connection_kwargs["password"] == "other"
    assert c.connection_pool.connection_kwargs["username"] == "me"
    c = redisconn.connect(f"unix://{tmp_path}/r.sock?db=2")
    assert c.connection_pool.connection_kwargs["path"] == f"{tmp_path}/r.sock"
    with pytest.raises(ValueError, match="scheme 'http'"):
        redisconn.connect("http://u:pw@host/")
    assert redact_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    cfg = load_config({"redis_url": redis_server.url, "redis_password": "pw-9f3k"})
    assert "pw-9f3k" not in repr(cfg)
    pool = redisconn.connect_from_config(cfg).connection_pool
    assert pool.connection_kwargs["password"] == "pw-9f3k"


def test_env_and_flags_override_the_file(tmp_path: Path, rings_dir: Path,
                                         redis_server: RedisServer) -> None:
    env = {"COLLECTOR_REDIS_URL": redis_server.url}
    daemon = Daemon.write(tmp_path, "redis://127.0.0.1:1/0", pool_size=1, env=env).start()
    cfg = daemon.config
    try:
        assert len(daemon.flusher_pids()) == 1
        assert daemon.stop() == 0
    finally:
        daemon.close()
    port = free_port()
    data = yaml.safe_load(cfg.read_text())
    assert data["pool_size"] == 1
    flags = Daemon(cfg, log=tmp_path / "flags.log", env=env, address=f"127.0.0.1:{port}",
                   args=["--pool-size", "3", "--health-address", f"127.0.0.1:{port}"])
    try:
        flags.start()
        wait_until(lambda: len(flags.flusher_pids()) == 3, 30, "three flushers")
        assert flags.stop(30) == 0
    finally:
        flags.close()


def test_acl_user_and_password_from_env_never_logged(tmp_path: Path, rings_dir: Path,
                                                      redis_server: RedisServer) -> None:
    """An ACL user allowed only XADD/XLEN/PING on the stream keys is enough."""
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "collector", "on", ">pw-Zq81x", "~collector:*",
                          "resetchannels", "-@all", "+xadd", "+xlen", "+ping")
    daemon = Daemon.write(tmp_path, redis_server.url, redis_username="collector",
                          log_level="debug", env={"COLLECTOR_REDIS_PASSWORD": "pw-Zq81x"}).start()
    cfg = daemon.config
    try:
        Producers.ring(rings_dir, 1, 3_000).start().join()
        wait_until(lambda: stream_record_count(admin) >= 3_000, 30, "records")
        assert account(tally_stream(admin), producer_ids(1, 3_000)).ok
        assert daemon.stop() == 0
        assert "pw-Zq81x" not in daemon.log_text()
    finally:
        daemon.close()
    # A wrong password: a clear error naming the keys to check, exit non-zero at once.
    daemon = Daemon(cfg, log=tmp_path / "daemon2.log",
                    env={"COLLECTOR_REDIS_PASSWORD": "wrong-pw"}).start(wait=False)
    try:
        assert daemon.wait(30) == 3
        assert "redis_password" in daemon.log_text()
        assert "wrong-pw" not in daemon.log_text()
    finally:
        daemon.close()
