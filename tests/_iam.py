"""What the iam tests share: the Go peer (``tests/iam_peer/main.go``, built from
Debian's golang-go, msgpack v5 and mgo packages in GOPATH mode), running it onto
a real redis-server list, and what iam-pump stores for each record."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.testing import (
    RedisServer,
    group_lags,
)

ROOT = Path(__file__).resolve().parent.parent
LIST = "analytics-iam-system-analytics"
LIST_RING = f"list-{LIST}"
N = 1000


@dataclass
class Reference:
    """What iam-pump stores for each record, by its index on the list."""

    csv_header: str
    json: list[dict[str, Any]]
    bson: list[bytes]
    csv: list[str]
    counts: dict[str, int]


def run_peer(binary: Path, *args: str) -> str:
    """Run the peer in UTC (iam-pump's container zone) and return its output."""
    done = subprocess.run([str(binary), *args], env={**os.environ, "TZ": "UTC"},
                          check=True, capture_output=True, text=True, timeout=120)
    return done.stdout


def produce(binary: Path, redis: RedisServer, reference: Path, n: int = N,
            password: str | None = None) -> Reference:
    args = ["-n", str(n), "-redis", f"127.0.0.1:{redis.port}", "-reference", str(reference)]
    if password:
        args += ["-password", password]
    run_peer(binary, *args)
    lines = [json.loads(line) for line in reference.read_text().splitlines()]
    recs = lines[1:-1]
    return Reference(lines[0]["csv_header"], [r["json"] for r in recs],
                     [base64.b64decode(r["bson"]) for r in recs], [r["csv"] for r in recs],
                     lines[-1])


def index(record_id: str) -> int:
    ring, _, seq = record_id.rpartition(":")
    assert ring == LIST_RING, record_id
    return int(seq)


def dead_letters(r: Any, sink: str) -> int:
    return int(r.xlen(f"collector:analytics:dead:{sink}"))


def drained(r: Any, sinks: list[str]) -> bool:
    lags = group_lags(r)
    return r.llen(LIST) == 0 and all(lags.get(s, 1) == 0 for s in sinks)


def build_iam_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go peer, built (the ``iam_peer`` session fixture in conftest)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed: run `sh .ci/setup` (golang-go)")
    out = tmp_path_factory.mktemp("iam_peer")
    env = {**os.environ, "GO111MODULE": "off",
           "GOPATH": f"{out / 'gopath'}:/usr/share/gocode"}
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build")
                   if os.environ.get("HOME") else str(out / "gocache"))
    binary = out / "iam_peer"
    subprocess.run([go, "build", "-o", str(binary), str(ROOT / "tests/iam_peer/main.go")],
                   env=env, check=True, capture_output=True, timeout=600)
    return binary
