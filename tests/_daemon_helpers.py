"""Helpers for the collector-daemon tests: producers, a daemon subprocess, counting.

Producers are real processes that write msgpack records into their own ring
exactly as ``collector.Analytics.record_hit`` does (``RingWriter.try_write``
of the encoded dict); each record carries ``producer`` and ``seq`` so the
tests can count what arrived in Redis by ``(producer, seq)``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import psutil
import redis
import yaml

import ringbuf
from collector.common.stream import decode_entry, shard_keys

from ._support import free_port, wait_until

DAEMON = str(Path(sys.executable).with_name("collector-daemon"))
CTX = mp.get_context("spawn")


def make_record(producer: int, seq: int) -> dict[str, Any]:
    """The record producer ``producer`` sends as number ``seq`` (deterministic)."""
    return {
        "producer": producer,
        "seq": seq,
        "username": f"user-{seq % 97}",
        "effect": "allow" if seq % 3 else "deny",
        "pad": "x" * (seq % 41),
    }


def produce(rings_dir: str, producer: int, count: int, capacity: int = 1 << 20,
            close: bool = True, pace_every: int = 0, pace_s: float = 0.0,
            started: Any = None) -> None:
    """Write ``count`` records into a new ring; wait for room when it is full.

    Nothing is dropped: a full ring makes the producer wait (a drop would be
    counted as lost by the tests). ``pace_every``/``pace_s`` slow it down to
    keep a load running for a while.
    """
    writer = ringbuf.RingWriter.create(rings_dir, capacity_bytes=capacity)
    if started is not None:
        started.set()
    packb = msgpack.Packer(use_bin_type=True).pack
    write = writer.try_write
    for seq in range(count):
        payload = packb(make_record(producer, seq))
        while not write(payload):
            time.sleep(0.0005)
        if pace_every and seq % pace_every == pace_every - 1:
            time.sleep(pace_s)
    if close:
        writer.close()
    else:
        # Stay alive (a live producer) until killed.
        while True:
            time.sleep(1)


def produce_with_analytics(config: str, producer: int, count: int, dropped: Any) -> None:
    """Like :func:`produce`, through the real client configured by the daemon's file."""
    from collector import Analytics

    analytics = Analytics.from_config(config, environ={}).start()
    drops = 0
    for seq in range(count):
        if not analytics.record_hit(make_record(producer, seq)):
            drops += 1
    dropped.value = drops
    analytics.stop()


def start_producers(rings_dir: Path, n: int, count: int, first: int = 0,
                    **kw: Any) -> list[Any]:
    """Start producers numbered ``first`` .. ``first + n - 1``."""
    procs = []
    for p in range(first, first + n):
        proc = CTX.Process(target=produce, args=(str(rings_dir), p, count), kwargs=kw,
                           daemon=True)
        proc.start()
        procs.append(proc)
    return procs


def join_all(procs: list[Any], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
        assert p.exitcode == 0, f"producer {p.pid} exited with {p.exitcode}"


def write_config(path: Path, **keys: Any) -> Path:
    path.write_text(yaml.safe_dump(keys))
    return path


def base_config(tmp_path: Path, redis_url: str | None, rings_dir: Path, **keys: Any) -> Path:
    cfg = {
        "redis_url": redis_url,
        "rings_dir": str(rings_dir),
        "runtime_dir": str(tmp_path / "run"),
        "pool_size": 2,
        "batch_size": 1000,
        "flush_interval_ms": 20,
        "max_flush_interval_ms": 100,
        "scan_interval_ms": 50,
        "retry_initial_ms": 20,
        "retry_max_ms": 300,
        "shutdown_timeout_s": 20,
        "startup_redis_wait_s": 5,
        "health_address": f"127.0.0.1:{free_port()}",
        "log_level": "info",
    }
    cfg.update(keys)
    return write_config(tmp_path / "collector.yaml", **cfg)


@dataclass
class Daemon:
    """``collector-daemon --config FILE`` as a subprocess."""

    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return yaml.safe_load(self.config.read_text())["health_address"]

    def start(self, wait_ready: bool = True) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
        env.update(self.env)
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([DAEMON, "--config", str(self.config)],
                                     stdout=self._logf, stderr=self._logf, env=env)
        if wait_ready:
            wait_until(self.ready, 30, "the daemon to be ready")
        return self

    def get(self, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.address}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def ready(self) -> bool:
        self.check_running()
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def readyz(self) -> tuple[int, dict[str, Any]]:
        code, body = self.get("/readyz")
        return code, json.loads(body)

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics as {"name{labels}": value}."""
        _, body = self.get("/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def check_running(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"collector-daemon exited with {self.proc.returncode}:\n"
                                 + self.log_text()[-3000:])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def flusher_pids(self) -> list[int]:
        """The flushers' pids, as /readyz reports them."""
        return [f["pid"] for f in self.readyz()[1]["flushers"] if f["alive"]]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._logf.close()
        return code

    def stop(self, timeout: float = 60.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill_all(self) -> None:
        """kill -9 of the supervisor and its children (the whole daemon)."""
        assert self.proc is not None
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        self.proc.kill()
        for k in kids:
            try:
                k.kill()
            except psutil.NoSuchProcess:
                pass
        self.wait()
        psutil.wait_procs(kids, timeout=10)

    def close(self) -> None:
        """Make sure nothing is left running (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill_all()


def count_records(client: redis.Redis, stream_key: str = "collector:analytics",
                  shards: int = 1, check: bool = True) -> Counter[tuple[int, int]]:
    """Every record in the stream(s) counted by (producer, seq); checks contents."""
    seen: Counter[tuple[int, int]] = Counter()
    for key in shard_keys(stream_key, shards):
        start = "-"
        while True:
            entries = client.xrange(key, min=start, max="+", count=500)
            if not entries:
                break
            for _eid, fields in entries:
                entry = decode_entry(fields)
                for i, raw in enumerate(entry.records):
                    rec = msgpack.unpackb(raw, raw=False)
                    p, s = rec["producer"], rec["seq"]
                    if check:
                        assert rec == make_record(p, s), f"record {(p, s)} decodes to {rec}"
                        assert entry.first_seq + i == s, "record id does not match its seq"
                    seen[(p, s)] += 1
            last = entries[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else last)
    return seen


def lost_and_duplicated(seen: Counter[tuple[int, int]], producers: int,
                        count: int) -> tuple[int, int, int]:
    """(lost, duplicated, unexpected) over producers 0..n-1 x seq 0..count-1."""
    lost = sum(1 for p in range(producers) for s in range(count) if (p, s) not in seen)
    dup = sum(c - 1 for c in seen.values() if c > 1)
    unexpected = sum(1 for (p, s) in seen if not (0 <= p < producers and 0 <= s < count))
    return lost, dup, unexpected


def total_in_stream(client: redis.Redis, stream_key: str = "collector:analytics",
                    shards: int = 1) -> int:
    """Records in the stream(s) (sum of the entries' ``n``), without decoding records."""
    n = 0
    for key in shard_keys(stream_key, shards):
        start = "-"
        while True:
            entries = client.xrange(key, min=start, max="+", count=1000)
            if not entries:
                break
            n += sum(int(f[b"n"]) for _, f in entries)
            last = entries[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else last)
    return n


def ring_files(rings_dir: Path) -> list[Path]:
    return sorted(p for p in rings_dir.glob("*.ring"))
