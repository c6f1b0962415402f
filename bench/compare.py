"""``python -m bench compare [--quick]``: six analytics designs side by side.

One run, one machine, the same authz record, each design behind
``start()`` / ``record(dict) -> bool`` / ``stop()``:

1. ``none``        no analytics (the floor)
2. ``ours``        ``collector.Analytics`` + ``collector-daemon``
3. ``sync_rpush``  one synchronous ``RPUSH`` per request
4. ``seed_queue``  the seed's design in-process: bounded ``queue.Queue``, worker
                   threads, msgpack, pipelined ``RPUSH`` batches, flush interval
5. ``otel_deque``  OpenTelemetry-style bounded deque + one background thread
6. ``mp_queue``    ``multiprocessing.Queue`` to a separate sender process

Measured, each repeated ``--repeat`` times (5; 1 with ``--quick``) in
fresh processes, designs interleaved within a repeat:

(a) producer cost: ``record()`` ns p50/p99 in a tight loop, and the app
    process's CPU per record including its own background threads
    (``time.process_time`` around the loop and ``stop()``). A design that
    refuses a record (its buffer is full) is offered it again after a
    0.2 ms sleep, so every design delivers every record and the refusals are
    counted ("refused+retried"); the main thread's own CPU in those sleeps
    (waking up costs tens of µs on a virtual machine) is the harness's and
    is not counted;
(b) gunicorn (sync workers = cores) serving the authz app under ``wrk``:
    a paced run (few connections, a pause between requests) and a saturated
    run: requests/s, p50/p99 latency, ratio to design 1; CPU per request of
    the workers, the daemon, Redis and the whole machine; and ``record()``
    timed inside the workers (``BENCH_RECORD_STATS``, ``bench/_wsgi.py``);
(c) records/s end to end into Redis with 1, 2 and 4 producer processes
    (same re-offer rule; from the producers' start until Redis holds every
    record: for ours the daemon's ``records_written`` counter, then the
    stream is checked; for the others the list length);
(d) for ours: time from ``record_hit`` to the record being in a sink
    (``collector-pump`` with a JSON Lines file sink; the record carries
    ``time.time()``, the bench tails the file);
(e) the saturated-throughput target: ``--rounds`` (10; 3 with ``--quick``)
    interleaved rounds of none / ours / OTel-style, one saturated run of
    ``--round-seconds`` each on gunicorns kept running, judged on the median
    of the paired ratios of requests/s and of CPU per request, with a 95%
    interval of the median (:mod:`bench._compare_rounds`).

Prints medians with min/max and ratios to ours, writes
``bench/results/<date>.json`` and ``bench/results/<date>.png``.
Redis runs without persistence here (the same for every design); ours runs
``collector-daemon`` with its shipped pool, batch, flush and scan settings
(``DAEMON_SETTINGS``), so (d) shows the default ``flush_interval_ms``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collector.testing import RedisServer

from . import _harness as h
from ._compare_measure import DAEMON_SETTINGS, end_to_end, sink_latency, tight_loop
from ._compare_report import chart, report, summarize, targets
from ._compare_rounds import paired, round_order, verdicts
from ._compare_serve import RoundServers, serve
from ._designs import DESIGNS

__all__ = ["main", "summarize", "targets"]

RESULTS = Path(__file__).resolve().parent / "results"

# ---------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench compare",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shorter runs (< 2 min)")
    ap.add_argument("--repeat", type=int, default=None, help="repeats (default 5; quick 1)")
    ap.add_argument("--designs", default=",".join(DESIGNS),
                    help=f"comma-separated subset of {','.join(DESIGNS)}")
    ap.add_argument("--skip", default="",
                    help="sections to skip: comma-separated of loop,gunicorn,e2e,latency,rounds")
    ap.add_argument("--rounds", type=int, default=None,
                    help="paired saturated rounds of none/ours/OTel (default 10; quick 3)")
    ap.add_argument("--round-seconds", type=float, default=None,
                    help="seconds of each saturated run of (e) (default 5; quick 2)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                    help="gunicorn sync workers (default: number of cores)")
    ap.add_argument("--out", default=None, help="results JSON path (default bench/results/)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    names = [n for n in args.designs.split(",") if n]
    bad = set(names) - set(DESIGNS)
    if bad:
        ap.error(f"--designs: unknown design(s) {sorted(bad)}; known: {', '.join(DESIGNS)}")
    args.names = names
    args.skip = {s for s in args.skip.split(",") if s}
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    if args.rounds is None:
        args.rounds = 3 if args.quick else 10
    if args.round_seconds is None:
        args.round_seconds = 2.0 if args.quick else 5.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    q = args.quick
    n_loop = {"none": 200_000, "ours": 200_000, "sync_rpush": 5_000}
    n_loop_default = 100_000
    if q:
        n_loop = {"none": 50_000, "ours": 50_000, "sync_rpush": 1_500}
        n_loop_default = 30_000
    n_e2e = {"sync_rpush": 1_500 if q else 5_000}
    n_e2e_default = 120_000 if q else 400_000
    wrk_s = 2.0 if q else 5.0
    producer_counts = (1, 2, 4)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="collector-compare-"))
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)

    try:
        from tqdm import tqdm
    except ImportError:  # the bench extra is optional
        tqdm = None

    steps: list[tuple[str, str, Any]] = []
    for _rep in range(args.repeat):
        if "loop" not in args.skip:
            steps += [("loop", n, None) for n in args.names]
        if "gunicorn" not in args.skip:
            steps += [("gunicorn", n, None) for n in args.names]
        if "e2e" not in args.skip:
            steps += [("e2e", n, p) for p in producer_counts for n in args.names if n != "none"]
        if "latency" not in args.skip and "ours" in args.names:
            steps.append(("latency", "ours", None))
    if "rounds" not in args.skip:
        for r in range(args.rounds):
            steps += [("round", n, r) for n in round_order(args.names, r)]

    load_start = list(os.getloadavg())
    redis = RedisServer(workdir / "redis", appendonly=False).start()
    ours = h.daemon(workdir, redis.url, **DAEMON_SETTINGS)
    ccfg = ours.config
    env = {"redis_url": redis.url, "collector_yaml": str(ccfg)}
    daemon = ours.start() if "ours" in args.names else None
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    errors: list[str] = []
    round_servers = RoundServers(env, workdir, args.workers, daemon,
                                 redis.proc.pid if redis.proc else None)
    t_start = time.monotonic()
    bar = tqdm(total=len(steps), unit="step", dynamic_ncols=True) if tqdm else None
    try:
        for kind, name, extra in steps:
            if bar is not None:
                what = f" round {extra}" if kind == "round" else f" x{extra}" if extra else ""
                bar.set_description(f"{kind} {name}{what}")
            try:
                if kind == "loop":
                    n = n_loop.get(name, n_loop_default)
                    res = tight_loop(name, env, n)
                    raw.setdefault("loop", {}).setdefault(name, []).append(res)
                elif kind == "gunicorn":
                    res = serve(name, env, workdir, args.workers, wrk_s, saturate_conns=16,
                                daemon=daemon,
                                redis_pid=redis.proc.pid if redis.proc else None)
                    raw.setdefault("gunicorn_paced", {}).setdefault(name, []).append(
                        res["paced"])
                    raw.setdefault("gunicorn_saturated", {}).setdefault(name, []).append(
                        res["saturated"])
                elif kind == "e2e":
                    n = n_e2e.get(name, n_e2e_default) // extra
                    res = end_to_end(name, env, extra, n, redis, daemon)
                    raw.setdefault(f"end_to_end_{extra}", {}).setdefault(name, []).append(res)
                elif kind == "round":
                    res = round_servers.run(name, args.round_seconds)
                    raw.setdefault("saturated_rounds", {}).setdefault(name, []).append(
                        dict(res, round=extra))
                elif kind == "latency":
                    res = sink_latency(workdir, redis.url, ccfg, rate=1000 if q else 2000,
                                       seconds=2 if q else 5)
                    raw.setdefault("sink_latency", {}).setdefault(name, []).append(res)
            except Exception as exc:
                msg = f"{kind} {name} {extra or ''}: {type(exc).__name__}: {exc}"
                errors.append(msg)
                (bar.write if bar else print)(f"compare: FAILED {msg}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for name, rec in round_servers.close().items():
            raw.setdefault("rounds_record", {}).setdefault(name, []).append(rec)
        ours.stop()
        ours.close()
        redis.kill()
        if args.workdir is None and not errors:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - t_start
    summary = summarize(raw)
    if "saturated_rounds" in raw:
        summary["saturated_paired"] = paired(raw["saturated_rounds"])
    report(summary, args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else RESULTS / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": q, "repeat": args.repeat,
        "seconds": round(elapsed, 1), "rounds": args.rounds,
        "round_seconds": args.round_seconds, "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()},
        "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
        "gunicorn_workers": args.workers, "summary": summary, "raw": raw, "errors": errors,
        "targets": targets(summary) + verdicts(summary.get("saturated_paired", {})),
    }
    out.write_text(json.dumps(doc, indent=2))
    png = chart(summary, out.with_suffix(".png"),
                f"collector bench compare ({'quick, ' if q else ''}{args.repeat} repeat(s), "
                f"{os.cpu_count()} cores, gunicorn {args.workers} sync workers)")
    print(f"\ncompare: {elapsed:.0f}s; load average {load_start[0]:.1f} at the start, "
          f"{doc['load_average_end'][0]:.1f} at the end ({os.cpu_count()} cores; other "
          "load on the machine skews every figure)")
    print(f"compare: results {out}" + (f", chart {png}" if png else ""))
    if args.repeat < 5:
        print(f"compare: {args.repeat} repeat(s): the target lines below are indicative only "
              "(a single gunicorn run here varies by +-10%); the targets are judged on 5")
    for line in doc["targets"]:
        print(f"compare: target {line}")
    if errors:
        print(f"compare: {len(errors)} measurement(s) failed:")
        for e in errors:
            print(f"  {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
