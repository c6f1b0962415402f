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
import multiprocessing as mp
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from collector.testing import Daemon, Pump, authz_record, jsonl_lines, jsonl_records, record_key


def _producer(idx: int, collector_yaml: str, count: int, rate: float, out: Any) -> None:
    from collector import Analytics

    sent = dropped = 0
    analytics = Analytics.from_config(collector_yaml)
    analytics.start()
    start = time.monotonic()
    for seq in range(count):
        if analytics.record_hit(authz_record(idx, seq, timestamp=time.time())):
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

    # A temp dir is made 0700; a given --workdir is created 0700 if missing and
    # otherwise left as it is (the daemon checks its own directories in it).
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="collector-demo-"))
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    logs = workdir / "logs"
    # no redis_url: the daemon runs its own redis-server on a unix socket in run/
    daemon = Daemon.write(workdir, None, base={}, pool_size=2, log=logs / "daemon.log")
    collector_yaml = daemon.config
    sink_path = workdir / "out" / "analytics.jsonl"
    pump = Pump.write(workdir, f"unix://{workdir / 'run' / 'redis.sock'}", {
        "file": {"workers": 1, "meta": {"path": str(sink_path), "format": "jsonl"}}},
        base={}, log=logs / "pump.log")
    print(f"demo: working directory {workdir}")
    try:
        try:
            daemon.start(timeout=60)
            print(f"demo: collector-daemon ready on {daemon.address} (private redis-server)")
            pump.start(timeout=60)
        except AssertionError as exc:  # it exited, or did not answer in time
            raise SystemExit(f"demo: {exc}") from None
        print(f"demo: collector-pump healthy on {pump.address}, sink {sink_path}")

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
            delivered = jsonl_lines(sink_path)
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
        while jsonl_lines(sink_path) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
            if time.monotonic() >= next_report:
                progress()
                next_report += 1.0
        done_at = time.monotonic()
        seen = Counter(record_key(rec) for rec in jsonl_records(sink_path))
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
        pump.stop(60)
        daemon.stop(60)
        pump.close()
        daemon.close()
        print(f"demo: stopped pump and daemon; logs in {logs}")


if __name__ == "__main__":
    sys.exit(main())
