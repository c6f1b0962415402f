"""A sink the pump's workers import via ``plugins:``, and the pump tests' records.

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
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import redis

from collector.testing import fill_stream, jsonl_records
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
        marker = Path(self.config.path + ".inflight")  # type: ignore[attr-defined]
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, marker)  # whoever sees the marker reads the pid, never an empty file
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
        if poison and any(d.get(poison) for d in batch.datas()):
            raise RetryableError("poison record")
        if mode == "block_before_write":
            self._block(deadline)
        pid = os.getpid()
        lines = b"".join(  # the batch's columns: no Record object made
            json.dumps({"id": rid, "seq": d.get("seq"), "pid": pid}).encode() + b"\n"
            for rid, d in zip(batch.ids(), batch.datas(), strict=True))
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


# -- records with known fields, and counting the sink's lines -----------------------

def make_record(seq: int, **extra: Any) -> bytes:
    """The msgpack record ``seq`` the pump tests filter and count (fields they assert on)."""
    rec = {"seq": seq, "timestamp": 1700000000 + seq, "username": f"user{seq % 7}",
           "effect": "allow", "conclusion": "ok", "request": "{}",
           "policies": "p1,p2", "deciders": "d1"}
    rec.update(extra)
    return msgpack.packb(rec, use_bin_type=True)


def produce(r: redis.Redis, n: int, **kw: Any) -> list[int]:
    """:func:`collector.testing.fill_stream` of :func:`make_record` records."""
    return fill_stream(r, n, record=make_record, **kw)


def count_jsonl(path: Path, key: str = "seq") -> collections.Counter[Any]:
    """Lines of a ``testjsonl`` (or file sink) output counted by ``key``."""
    return collections.Counter(rec[key] for rec in jsonl_records(path))
