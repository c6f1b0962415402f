"""Test-only helpers for the pump tests, and a sink workers import via ``plugins:``.

``testjsonl`` appends one JSON line per record (``{"id", "seq", "pid"}``) to
``path`` with a single O_APPEND write per batch, so records written by many
worker processes can be counted by sequence number afterwards. Its
behaviour is steered at run time through a JSON ``control`` file:

    {"mode": "ok" | "retryable" | "permanent" | "block_before_write"
             | "block_after_write",
     "healthy": true, "poison_field": null, "ignore_deadline": false}

A blocking mode writes ``<path>.inflight`` (the worker's pid) and waits
until the mode changes or the deadline passes.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import redis
import yaml

from collector.common.stream import encode_entry
from pump.sinks import (
    Batch,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfig,
    Verdict,
    register,
)

ROOT = Path(__file__).resolve().parent.parent
PUMP = ROOT / ".venv" / "bin" / "collector-pump"


class TestJsonlConfig(SinkConfig):
    path: str
    control: str | None = None


def read_control(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def set_control(path: Path, **values: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(values))
    os.replace(tmp, path)


@register
class TestJsonlSink(Sink):
    name: ClassVar[str] = "testjsonl"
    Config: ClassVar[type[SinkConfig]] = TestJsonlConfig

    def open(self) -> None:
        assert isinstance(self.config, TestJsonlConfig)
        self.fd = os.open(self.config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _block(self, deadline: float) -> None:
        Path(self.config.path + ".inflight").write_text(str(os.getpid()))  # type: ignore[attr-defined]
        wait = threading.Event()
        mode = read_control(self.config.control).get("mode")  # type: ignore[attr-defined]
        ignore = read_control(self.config.control).get("ignore_deadline")  # type: ignore[attr-defined]
        while ignore or time.monotonic() < deadline:
            if read_control(self.config.control).get("mode") != mode:  # type: ignore[attr-defined]
                return
            wait.wait(0.02)
        raise RetryableError("blocked until the deadline")

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        ctl = read_control(self.config.control)  # type: ignore[attr-defined]
        mode = ctl.get("mode", "ok")
        if mode == "retryable":
            raise RetryableError("told to fail (retryable)")
        if mode == "permanent":
            raise PermanentError("told to fail (permanent)")
        poison = ctl.get("poison_field")
        if poison and any(r.data.get(poison) for r in batch.records):
            raise RetryableError("poison record")
        if mode == "block_before_write":
            self._block(deadline)
        pid = os.getpid()
        lines = b"".join(
            json.dumps({"id": r.id, "seq": r.data.get("seq"), "pid": pid}).encode() + b"\n"
            for r in batch.records)
        os.write(self.fd, lines)
        if mode == "block_after_write":
            self._block(deadline)
        return Verdict.OK

    def health_check(self, *, deadline: float) -> None:
        if not read_control(self.config.control).get("healthy", True):  # type: ignore[attr-defined]
            raise RetryableError("told to be unhealthy")

    def close(self, timeout_s: float = 5.0) -> None:
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)
            self.fd = None


# -- producing and counting ------------------------------------------------------

def make_record(seq: int, **extra: Any) -> bytes:
    rec = {"seq": seq, "timestamp": 1700000000 + seq, "username": f"user{seq % 7}",
           "effect": "allow", "conclusion": "ok", "request": "{}",
           "policies": "p1,p2", "deciders": "d1"}
    rec.update(extra)
    return msgpack.packb(rec, use_bin_type=True)


def produce(r: redis.Redis, n: int, *, key: str = "collector:analytics", per_entry: int = 100,
            start: int = 0, ring: str = "a" * 32, **extra: Any) -> list[int]:
    """XADD ``n`` records with seq start..start+n-1, ``per_entry`` per entry."""
    pipe = r.pipeline(transaction=False)
    for first in range(start, start + n, per_entry):
        recs = [make_record(s, **extra) for s in range(first, min(first + per_entry, start + n))]
        pipe.xadd(key, encode_entry(ring, first, recs))
    pipe.execute()
    return list(range(start, start + n))


def count_jsonl(path: Path, key: str = "seq") -> collections.Counter[int]:
    counts: collections.Counter[int] = collections.Counter()
    if not path.exists():
        return counts
    for line in path.read_bytes().splitlines():
        if line.strip():
            counts[json.loads(line)[key]] += 1
    return counts


def lost_and_duplicated(counts: collections.Counter[int], expected: list[int]) -> tuple[int, int]:
    lost = sum(1 for s in expected if counts.get(s, 0) == 0)
    dups = sum(c - 1 for c in counts.values() if c > 1)
    return lost, dups


def write_config(path: Path, **config: Any) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_pump(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    exe = str(PUMP) if PUMP.exists() else sys.executable
    args = [exe, "--config", str(config)] if PUMP.exists() else [
        exe, "-m", "pump.cli", "--config", str(config)]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"), start_new_session=True)
