"""The main job in one command: daemon, pump and a sample load, nothing external.

``python -m collector.demo`` starts, in a private temporary directory:

1. ``collector-daemon`` with no ``redis_url``, so it runs its own
   ``redis-server`` on a unix socket (append-only file on);
2. ``collector-pump`` reading that Redis into a ``file`` sink (JSON Lines);
3. several producer processes, each an ``Analytics`` client recording
   authz decisions like ``examples/authz_app.py`` does.

It prints records/s while the load runs, then stops the producers, waits
until every record reached the sink, stops pump and daemon with SIGTERM
and prints the accounting: sent, dropped by policy, delivered, lost,
duplicated. Exit status 0 only when nothing was lost.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def authz_record(producer: int, seq: int) -> dict[str, Any]:
    """A ~450-byte authorization record shaped like the seed's."""
    user = ("alice", "bob", "peter", "ken")[seq % 4]
    allowed = seq % 3 != 0
    return {
        "timestamp": time.time(),
        "username": user,
        "effect": "allow" if allowed else "deny",
        "conclusion": "policies matched" if allowed else "no policy allowed the request",
        "request": json.dumps({
            "subject": f"users:{user}", "action": "delete",
            "resource": "resources:articles:ladon-introduction",
            "context": {"remoteIP": "127.0.0.1", "producer": producer},
        }),
        "policies": json.dumps([{"id": "68819e5a-738b-41ec-b03c-b58a1b19d043",
                                 "effect": "allow", "subjects": ["users:<peter|ken>"]}]),
        "deciders": json.dumps([{"id": "68819e5a-738b-41ec-b03c-b58a1b19d043"}]),
        "request_id": f"{producer:02d}-{seq:09d}",
        "latency_us": 87 + seq % 50,
        "producer": producer,
        "seq": seq,
    }


def _producer(idx: int, collector_yaml: str, count: int, rate: float, out: Any) -> None:
    from collector import Analytics

    sent = dropped = 0
    analytics = Analytics.from_config(collector_yaml)
    analytics.start()
    start = time.monotonic()
    for seq in range(count):
        if analytics.record_hit(authz_record(idx, seq)):
            sent += 1
        else:
            dropped += 1
        if rate and seq % 100 == 0:
            ahead = seq / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    analytics.stop()
    out.send((sent, dropped, start, time.monotonic()))
    out.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def _count_lines(path: Path) -> int:
    total = 0
    for f in sorted(path.parent.glob(path.name + "*")) if path.parent.exists() else []:
        with open(f, "rb") as fh:
            total += sum(1 for _ in fh)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m collector.demo",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--producers", type=int, default=4, help="producer processes (default 4)")
    ap.add_argument("--records", type=int, default=50_000,
                    help="records per producer (default 50000)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="records/s per producer, 0 = as fast as possible (default 0)")
    ap.add_argument("--workdir", default=None, help="keep files here instead of a temp dir")
    args = ap.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="collector-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    bindir = Path(sys.executable).parent
    daemon_port, pump_port = _free_port(), _free_port()
    collector_yaml = workdir / "collector.yaml"
    collector_yaml.write_text(yaml.safe_dump({
        "rings_dir": str(workdir / "rings"),
        "runtime_dir": str(workdir / "run"),
        "health_address": f"127.0.0.1:{daemon_port}",
        "pool_size": 2,
    }))
    sink_path = workdir / "out" / "analytics.jsonl"
    pump_yaml = workdir / "pump.yaml"
    pump_yaml.write_text(yaml.safe_dump({
        "redis_url": f"unix://{workdir / 'run' / 'redis.sock'}",
        "health_address": f"127.0.0.1:{pump_port}",
        "pumps": {"file": {"workers": 1, "meta": {"path": str(sink_path), "format": "jsonl"}}},
    }))
    print(f"demo: working directory {workdir}")
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    daemon = subprocess.Popen([str(bindir / "collector-daemon"), "--config", str(collector_yaml)],
                              stdout=open(logs / "daemon.log", "wb"), stderr=subprocess.STDOUT)
    pump = None
    try:
        _wait(lambda: _get(f"http://127.0.0.1:{daemon_port}/readyz")[0] == 200, 60,
              "collector-daemon to be ready (see logs/daemon.log)")
        print(f"demo: collector-daemon ready on 127.0.0.1:{daemon_port} (private redis-server)")
        pump = subprocess.Popen([str(bindir / "collector-pump"), "--config", str(pump_yaml)],
                                stdout=open(logs / "pump.log", "wb"), stderr=subprocess.STDOUT)
        _wait(lambda: _get(f"http://127.0.0.1:{pump_port}/healthz")[0] == 200, 60,
              "collector-pump to be healthy (see logs/pump.log)")
        print(f"demo: collector-pump healthy on 127.0.0.1:{pump_port}, sink {sink_path}")

        ctx = mp.get_context("spawn")
        pipes, procs = [], []
        t0 = time.monotonic()
        for i in range(args.producers):
            rx, tx = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_producer,
                            args=(i, str(collector_yaml), args.records, args.rate, tx))
            p.start()
            pipes.append(rx)
            procs.append(p)
        last = 0

        def progress() -> None:
            nonlocal last
            delivered = _count_lines(sink_path)
            print(f"demo: {time.monotonic() - t0:6.1f}s delivered {delivered:>9,} "
                  f"(+{delivered - last:,} in the last second into the file sink)")
            last = delivered

        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            progress()
        sent = dropped = 0
        first_start, last_end = float("inf"), 0.0
        for rx, p in zip(pipes, procs, strict=True):
            s, d, began, ended = rx.recv()
            first_start = min(first_start, began)
            last_end = max(last_end, ended)
            sent += s
            dropped += d
            p.join()
        deadline = time.monotonic() + 300
        next_report = time.monotonic() + 1.0
        while _count_lines(sink_path) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
            if time.monotonic() >= next_report:
                progress()
                next_report += 1.0
        done_at = time.monotonic()
        seen: dict[tuple[int, int], int] = {}
        for f in sorted(sink_path.parent.glob(sink_path.name + "*")):
            with open(f, "rb") as fh:
                for line in fh:
                    rec = json.loads(line)
                    key = (rec["producer"], rec["seq"])
                    seen[key] = seen.get(key, 0) + 1
        duplicated = sum(c - 1 for c in seen.values() if c > 1)
        delivered = len(seen)
        lost = sent - delivered
        send_s = max(last_end - first_start, 1e-9)
        print(f"demo: producers sent {sent:,} records in {send_s:.2f}s "
              f"({sent / send_s:,.0f} records/s into the rings); the last one reached the "
              f"sink {max(0.0, done_at - last_end):.2f}s after the last was sent")
        print(f"demo: sent {sent:,}  dropped by policy {dropped:,}  delivered {delivered:,}  "
              f"lost {lost:,}  duplicated {duplicated:,}")
        return 0 if lost == 0 else 1
    finally:
        for proc in (pump, daemon):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (pump, daemon):
            if proc is not None:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        print(f"demo: stopped pump and daemon; logs in {logs}")


if __name__ == "__main__":
    sys.exit(main())
