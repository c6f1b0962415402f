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
    ``time.time()``, the bench tails the file).

Prints medians with min/max and ratios to ours, writes
``bench/results/<date>.json`` and ``bench/results/<date>.png``.
Redis runs without persistence here (the same for every design); ours runs
``collector-daemon`` with its shipped pool, batch, flush and scan settings
(``DAEMON_SETTINGS``), so (d) shows the default ``flush_interval_ms``.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from collector.config import CollectorConfig

from . import _harness as h
from . import designs

DESIGNS = ("none", "ours", "sync_rpush", "seed_queue", "otel_deque", "mp_queue")
LABELS = {
    "none": "1 no analytics",
    "ours": "2 ours (ring + daemon)",
    "sync_rpush": "3 sync RPUSH",
    "seed_queue": "4 seed queue+threads",
    "otel_deque": "5 OTel deque+thread",
    "mp_queue": "6 mp.Queue+sender",
}
SHORT = {
    "none": "1 none", "ours": "2 ours", "sync_rpush": "3 sync\nRPUSH",
    "seed_queue": "4 seed\nqueue", "otel_deque": "5 OTel\ndeque", "mp_queue": "6 mp\nQueue",
}
RESULTS = Path(__file__).resolve().parent / "results"

# Ours as shipped: the daemon's default pool, flush and scan settings (not the
# test suite's faster ones); 64 MiB rings so the tight loops of (a) and (c)
# rarely fill them; no backlog limit in the way.
_SHIPPED = CollectorConfig.model_fields
DAEMON_SETTINGS: dict[str, Any] = {
    **{k: _SHIPPED[k].default for k in ("pool_size", "batch_size", "flush_interval_ms",
                                        "max_flush_interval_ms", "scan_interval_ms")},
    "ring_capacity_bytes": 64 * 1024 * 1024,
    "max_backlog_entries": 10_000_000,
}


# ---------------------------------------------------------------------------
# designs


def make_design(name: str, env: dict[str, str]) -> Any:
    """The design ``name`` behind ``start()`` / ``record(dict) -> bool`` / ``stop()``.

    ``env``: ``redis_url`` (every design that writes to Redis itself) and
    ``collector_yaml`` (ours: the config shared with the daemon).
    """
    return designs.make(name, redis_url=env.get("redis_url") or None,
                        collector_config=env.get("collector_yaml") or None)


def count_in_redis(name: str, client: Any) -> int:
    """Records design ``name`` has put into Redis so far."""
    return int(designs.count_in_redis(name, client))


def clear_redis(client: Any) -> None:
    client.flushall()


def _records(producer: int, n: int) -> list[dict[str, Any]]:
    from collector.demo import authz_record

    return [authz_record(producer, i) for i in range(n)]


# ---------------------------------------------------------------------------
# (a) tight loop, in a fresh process per design


def _tight_loop_child(name: str, env: dict[str, str], n: int, conn: Any) -> None:
    try:
        recs = _records(0, 1000)
        d = make_design(name, env)
        d.start()
        for i in range(min(2000, n)):
            d.record(recs[i % 1000])
        gc.collect()
        gc.disable()
        # latency: every call timed on its own; a call that dropped the record
        # (a full buffer) is not a sample: wait 0.2 ms and offer it again
        ns = time.perf_counter_ns
        lat = [0] * n
        rec = d.record
        refused = 0
        for i in range(n):
            r = recs[i % 1000]
            while True:
                t = ns()
                ok = rec(r)
                dt = ns() - t
                if ok:
                    break
                refused += 1
                time.sleep(0.0002)
            lat[i] = dt
        # CPU: an untimed loop (refused records offered again after a sleep),
        # then stop(), which drains background threads. A sleep is not free on
        # a virtual machine (tens of µs of CPU to wake up): the main thread's
        # own CPU in these retry sleeps is the harness's, not the design's, and
        # is taken out (the design's background threads keep counting).
        harness_cpu = 0.0
        thread_time = time.thread_time
        cpu0 = time.process_time()
        w0 = time.perf_counter()
        for i in range(n):
            r = recs[i % 1000]
            while not rec(r):
                refused += 1
                t = thread_time()
                time.sleep(0.0002)
                harness_cpu += thread_time() - t
        d.stop()
        cpu = time.process_time() - cpu0 - harness_cpu
        wall = time.perf_counter() - w0
        gc.enable()
        lat.sort()
        conn.send({
            "p50_ns": lat[n // 2], "p99_ns": lat[int(n * 0.99)],
            "cpu_ns_per_record": cpu * 1e9 / n,
            "wall_ns_per_record": wall * 1e9 / n,
            "refused_then_retried": refused, "n": n,
        })
    except BaseException as exc:  # report, never hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise




# ---------------------------------------------------------------------------
# (c) end to end into Redis


def _e2e_child(name: str, env: dict[str, str], producer: int, n: int, go: Any,
               conn: Any) -> None:
    try:
        recs = _records(producer, 1000)
        d = make_design(name, env)
        d.start()
        conn.send({"ready": True})
        go.wait()
        refused = 0
        rec = d.record
        for i in range(n):
            r = recs[i % 1000]
            while not rec(r):  # a full buffer: offer the record again shortly
                refused += 1
                time.sleep(0.0002)
        d.stop()
        conn.send({"accepted": n, "refused": refused})
    except BaseException as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def _receive(pipes: list[Any], timeout: float, name: str, late: str) -> list[dict[str, Any]]:
    """One message from each child's pipe: ``TimeoutError`` saying ``late`` if one
    is silent, ``RuntimeError`` if one reports an error."""
    msgs = []
    for rx in pipes:
        if not rx.poll(timeout):
            raise TimeoutError(f"{name}: {late}")
        msg = rx.recv()
        if "error" in msg:
            raise RuntimeError(f"{name}: {msg['error']}")
        msgs.append(msg)
    return msgs


def end_to_end(name: str, env: dict[str, str], producers: int, n: int,
               redis: h.RedisProc, daemon: h.Service | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    client = redis.client(socket_timeout=30)
    clear_redis(client)
    go = ctx.Event()
    pipes, procs = [], []
    for i in range(producers):
        rx, tx = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_e2e_child, args=(name, env, i, n, go, tx))
        p.start()
        pipes.append(rx)
        procs.append(p)
    try:
        _receive(pipes, 120, name, "a producer did not start")
        if name == "ours" and daemon is not None:
            # start the clock once the daemon has found every producer's ring
            h.wait_for(lambda: json.loads(daemon.get("readyz")[1]).get("rings", 0) >= producers,
                       30, "the daemon to find the producers' rings")
        base = _daemon_written(daemon) if name == "ours" and daemon is not None else 0
        t0 = time.perf_counter()
        go.set()
        done = _receive(pipes, 600, name, "a producer did not finish")
        accepted = sum(msg["accepted"] for msg in done)
        refused = sum(msg["refused"] for msg in done)
        if name == "ours" and daemon is not None:
            # the daemon's own counter (cheap to poll); verified on the stream below
            h.wait_for(lambda: _daemon_written(daemon) - base >= accepted, 300,
                       f"{name}: {accepted} records written by the daemon", interval=0.01)
        else:
            h.wait_for(lambda: count_in_redis(name, client) >= accepted, 300,
                       f"{name}: {accepted} records in Redis", interval=0.01)
        elapsed = time.perf_counter() - t0
        in_redis = count_in_redis(name, client)
        if in_redis < accepted:
            raise RuntimeError(f"{name}: {accepted} records accepted, {in_redis} in Redis")
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    clear_redis(client)
    return {"records_per_s": accepted / elapsed, "accepted": accepted,
            "refused_then_retried": refused, "seconds": elapsed}


def _daemon_written(daemon: h.Service) -> int:
    code, text = daemon.get("metrics")
    if code != 200:
        raise RuntimeError(f"collector-daemon /metrics answered {code}")
    for line in text.splitlines():
        if line.startswith("collector_daemon_records_written_total "):
            return int(float(line.split()[1]))
    raise RuntimeError("collector-daemon /metrics has no collector_daemon_records_written_total")


# ---------------------------------------------------------------------------
# (d) record_hit -> sink latency for ours


def _latency_child(collector_yaml: str, rate: float, seconds: float, conn: Any) -> None:
    from collector import Analytics
    from collector.demo import authz_record

    a = Analytics.from_config(collector_yaml)
    a.start()
    n = int(rate * seconds)
    t0 = time.monotonic()
    sent = 0
    for seq in range(n):
        r = authz_record(9, seq)
        r["sent_at"] = time.time()
        sent += a.record_hit(r)
        ahead = (seq + 1) / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    a.stop()
    conn.send({"sent": sent})


def sink_latency(workdir: Path, redis_url: str, collector_yaml: Path, rate: float,
                 seconds: float) -> dict[str, Any]:
    # a fresh sink file and an empty Redis for every run, so the pump reads only
    # this run's records (earlier sections leave records in the stream)
    out = Path(tempfile.mkdtemp(prefix="lat-", dir=workdir))
    path = out / "lat.jsonl"
    redis_client = redis.Redis.from_url(redis_url)
    redis_client.flushall()
    cfg, port = h.pump_config(workdir, redis_url, {
        "file": {"type": "file", "workers": 1,
                 "meta": {"path": str(path), "format": "jsonl", "fsync": "never"}}},
        read_block_s=0.05)
    pump = h.pump(workdir, cfg, port).start()
    ctx = mp.get_context("spawn")
    rx, tx = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_latency_child, args=(str(collector_yaml), rate, seconds, tx))
    lat: list[float] = []
    try:
        p.start()
        buf = b""
        fh = None
        deadline = time.monotonic() + seconds + 120
        sent = None
        while time.monotonic() < deadline:
            if fh is None and path.exists():
                fh = open(path, "rb")
            chunk = fh.read() if fh is not None else b""
            now = time.time()
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    try:
                        lat.append(now - float(json.loads(line)["sent_at"]))
                    except (ValueError, KeyError):
                        pass
            if sent is None and rx.poll():
                sent = rx.recv()["sent"]
            if sent is not None and len(lat) >= sent:
                break
            time.sleep(0.002)
        if fh is not None:
            fh.close()
    finally:
        p.join(30)
        pump.stop()
        redis_client.flushall()
    lat.sort()
    if not lat:
        raise RuntimeError("no record reached the sink")
    return {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
            "records": len(lat), "sent": sent}


# ---------------------------------------------------------------------------
# (b) gunicorn + wrk


_WRK_BODY = json.dumps({"subject": "users:alice", "action": "update",
                        "resource": "resources:articles:ladon-introduction",
                        "context": {"remoteIP": "192.168.0.10"}})


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _tree(pid: int | None) -> list[int]:
    if pid is None:
        return []
    try:
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _machine_cpu_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def serve(name: str, env: dict[str, str], workdir: Path, workers: int, duration: float,
          saturate_conns: int, daemon: h.Service | None = None,
          redis_pid: int | None = None) -> dict[str, Any]:
    stats_dir = Path(tempfile.mkdtemp(prefix=f"record-{name}-", dir=workdir))
    g = h.Gunicorn("bench._wsgi:app", workers, {
        "BENCH_DESIGN": name, "BENCH_REDIS_URL": env.get("redis_url", ""),
        "BENCH_COLLECTOR_YAML": env.get("collector_yaml", ""),
        "COLLECTOR_CONFIG": env.get("collector_yaml", ""),
        "BENCH_RECORD_STATS": str(stats_dir),
    }, workdir / "logs" / f"gunicorn-{name}.log").start()
    url = f"http://127.0.0.1:{g.port}/v1/authz"
    try:
        # warm-up: every worker builds its design
        h.run_wrk(url, duration_s=1, connections=workers * 2, threads=1, body=_WRK_BODY,
                  workdir=workdir)
        paced = h.run_wrk(url, duration_s=duration, connections=2, threads=1, body=_WRK_BODY,
                          pause_ms=2, workdir=workdir)
        wpids = g.worker_pids()
        dpids = _tree(daemon.pid) if name == "ours" and daemon is not None else []
        rpids = [redis_pid] if redis_pid else []
        c0, d0, r0 = _cpu_seconds(wpids), _cpu_seconds(dpids), _cpu_seconds(rpids)
        m0 = _machine_cpu_seconds()
        sat = h.run_wrk(url, duration_s=duration, connections=saturate_conns, threads=2,
                        body=_WRK_BODY, workdir=workdir)
        n = max(1.0, sat["requests"])
        sat["worker_cpu_us_per_request"] = (_cpu_seconds(wpids) - c0) * 1e6 / n
        sat["machine_cpu_us_per_request"] = (_machine_cpu_seconds() - m0) * 1e6 / n
        if rpids:
            sat["redis_cpu_us_per_request"] = (_cpu_seconds(rpids) - r0) * 1e6 / n
        if dpids:
            sat["daemon_cpu_us_per_request"] = (_cpu_seconds(dpids) - d0) * 1e6 / n
    finally:
        g.stop()
    # record() timed inside the workers over the whole run (warm-up, paced and
    # saturated): the mean over workers of each worker's figure
    per_worker = [json.loads(f.read_text()) for f in stats_dir.glob("*.json")]
    if per_worker:
        for key in ("p50_ns", "p99_ns", "mean_ns"):
            sat[f"record_in_worker_{key}"] = statistics.fmean(w[key] for w in per_worker)
    return {"paced": paced, "saturated": sat}


# ---------------------------------------------------------------------------
# reporting


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def _fmt(v: float, digits: int = 0) -> str:
    return f"{v:,.{digits}f}"


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, per_design in raw.items():
        out[section] = {}
        for name, runs in per_design.items():
            if not runs:
                continue
            keys = sorted({k for r in runs for k, v in r.items()
                           if isinstance(v, int | float) and not isinstance(v, bool)})
            out[section][name] = {k: _stats([float(r[k]) for r in runs if k in r])
                                  for k in keys}
    return out


def print_table(title: str, summary: dict[str, Any], cols: list[tuple[str, str, int]],
                ratio_key: str | None = None, ratio_bases: tuple[str, ...] = ("ours",)) -> None:
    """Medians [min-max] per design; then ``ratio_key``'s median / each base's median."""
    print(f"\n{title}")
    header = f"{'design':<26}" + "".join(f"{label:>26}" for label, _, _ in cols)
    bases = [b for b in ratio_bases if ratio_key] if ratio_key else []
    header += "".join(f"{'/ ' + b:>10}" for b in bases)
    print(header)
    for name in DESIGNS:
        if name not in summary:
            continue
        row = f"{LABELS[name]:<26}"
        for _, key, digits in cols:
            s = summary[name].get(key)
            if s is None:
                row += f"{'-':>26}"
            else:
                cell = (f"{_fmt(s['median'], digits)} [{_fmt(s['min'], digits)}-"
                        f"{_fmt(s['max'], digits)}]")
                row += f"{cell:>26}"
        for b in bases:
            base = summary.get(b, {}).get(ratio_key or "", {}).get("median")
            v = summary[name].get(ratio_key or "", {}).get("median")
            row += f"{v / base:>9.2f}x" if base and v is not None else f"{'-':>10}"
        print(row)


def chart(summary: dict[str, Any], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("compare: matplotlib is not installed (pip install .[bench]); no chart")
        return None
    fig, grid = plt.subplots(2, 2, figsize=(13, 9))
    axes = list(grid.flat)
    colors = ["#999999", "#2a7ab9", "#d9534f", "#f0ad4e", "#5cb85c", "#8e6bbf"]
    cmap = dict(zip(DESIGNS, colors, strict=True))

    def bars(ax: Any, section: str, key: str, ylabel: str, ttl: str,
             log: bool = False) -> None:
        data = summary.get(section, {})
        names = [n for n in DESIGNS if n in data and key in data[n]]
        if not names:
            ax.set_axis_off()
            ax.set_title(ttl + " (not measured)", fontsize=11)
            return
        med = [data[n][key]["median"] for n in names]
        lo = [data[n][key]["median"] - data[n][key]["min"] for n in names]
        hi = [data[n][key]["max"] - data[n][key]["median"] for n in names]
        xs = range(len(names))
        ax.bar(xs, med, yerr=[lo, hi], capsize=4, color=[cmap[n] for n in names])
        ax.set_xticks(list(xs))
        ax.set_xticklabels([SHORT[n] for n in names], fontsize=9)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(ttl, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        for x, v in zip(xs, med, strict=True):
            ax.annotate(f"{v:,.0f}" if v >= 100 else f"{v:.2f}", (x, v), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")

    bars(axes[0], "gunicorn_saturated", "rps", "requests/s",
         "(b) gunicorn saturated: requests/s (higher is better)")
    bars(axes[1], "gunicorn_saturated", "p99_ms", "ms",
         "(b) gunicorn saturated: p99 latency (lower is better)")
    e2e = "end_to_end_4" if summary.get("end_to_end_4") else "end_to_end_1"
    bars(axes[2], e2e, "records_per_s", "records/s",
         f"(c) end to end into Redis, {e2e[-1]} producer process(es)")
    bars(axes[3], "loop", "cpu_ns_per_record", "ns (log scale)",
         "(a) app-process CPU per record (lower is better)", log=True)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
                    help="sections to skip: comma-separated of loop,gunicorn,e2e,latency")
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

    load_start = list(os.getloadavg())
    redis = h.RedisProc(workdir / "redis", persistence="none").start()
    ccfg, dport = h.daemon_config(workdir, redis.url, **DAEMON_SETTINGS)
    env = {"redis_url": redis.url, "collector_yaml": str(ccfg)}
    daemon = h.daemon(workdir, ccfg, dport).start() if "ours" in args.names else None
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    errors: list[str] = []
    t_start = time.monotonic()
    bar = tqdm(total=len(steps), unit="step", dynamic_ncols=True) if tqdm else None
    try:
        for kind, name, extra in steps:
            if bar is not None:
                bar.set_description(f"{kind} {name}" + (f" x{extra}" if extra else ""))
            try:
                if kind == "loop":
                    n = n_loop.get(name, n_loop_default)
                    res = h.run_in_child(_tight_loop_child, name, env, n)
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
        if daemon is not None:
            daemon.stop()
        redis.kill()
        if args.workdir is None and not errors:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - t_start
    summary = summarize(raw)
    report(summary, args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else RESULTS / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": q, "repeat": args.repeat,
        "seconds": round(elapsed, 1), "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()},
        "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
        "gunicorn_workers": args.workers, "summary": summary, "raw": raw, "errors": errors,
        "targets": targets(summary),
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


def targets(summary: dict[str, Any]) -> list[str]:
    out = []

    def med(section: str, name: str, key: str) -> float | None:
        return summary.get(section, {}).get(name, {}).get(key, {}).get("median")

    floor, ours = med("gunicorn_saturated", "none", "rps"), med("gunicorn_saturated", "ours",
                                                               "rps")
    if floor and ours:
        ok = ours >= 0.97 * floor
        line = (f"ours keeps {ours / floor:.1%} of design 1's saturated requests/s "
                f"(>= 97%): {'met' if ok else 'NOT met'}")
        w_floor = med("gunicorn_saturated", "none", "machine_cpu_us_per_request")
        w_ours = med("gunicorn_saturated", "ours", "machine_cpu_us_per_request")
        if w_floor and w_ours:
            line += (f"; machine CPU per request {w_ours:.0f} us vs {w_floor:.0f} us "
                     f"({w_ours / w_floor - 1:+.1%})")
        out.append(line)
    cpu_ours = med("loop", "ours", "cpu_ns_per_record")
    for name, factor in (("seed_queue", 2), ("otel_deque", 2), ("sync_rpush", 30)):
        other = med("loop", name, "cpu_ns_per_record")
        if cpu_ours and other:
            ok = other >= factor * cpu_ours
            out.append(f"app CPU per record: {LABELS[name]} / ours = {other / cpu_ours:.1f}x "
                       f"(>= {factor}x): {'met' if ok else 'NOT met'}")
    best = max((med(f"end_to_end_{p}", "ours", "records_per_s") or 0) for p in (1, 2, 4))
    if best:
        out.append(f"ours end to end into Redis: {best:,.0f} records/s (>= 300,000): "
                   f"{'met' if best >= 300_000 else 'NOT met'}")
    return out


def report(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\ncompare: medians [min-max] over {args.repeat} repeat(s); collector-daemon: "
          + ", ".join(f"{k}={v}" for k, v in DAEMON_SETTINGS.items()))
    if "loop" in summary:
        print_table("(a) producer cost in a tight loop (record() per call, app-process CPU per "
                    "accepted record incl. background threads)", summary["loop"],
                    [("record() p50 ns", "p50_ns", 0), ("record() p99 ns", "p99_ns", 0),
                     ("app CPU ns/record", "cpu_ns_per_record", 0),
                     ("refused+retried", "refused_then_retried", 0)],
                    ratio_key="cpu_ns_per_record")
    for section, ttl in (("gunicorn_paced", "(b) gunicorn, paced (2 connections, 2 ms pause)"),
                         ("gunicorn_saturated", "(b) gunicorn, saturated (16 connections)")):
        if section in summary:
            s = summary[section]
            print_table(ttl + "; last columns: requests/s relative to design 1 and to ours", s,
                        [("requests/s", "rps", 0), ("p50 ms", "p50_ms", 2),
                         ("p99 ms", "p99_ms", 2)]
                        + ([("worker CPU us/req", "worker_cpu_us_per_request", 0),
                            ("daemon CPU us/req", "daemon_cpu_us_per_request", 1),
                            ("redis CPU us/req", "redis_cpu_us_per_request", 1),
                            ("machine CPU us/req", "machine_cpu_us_per_request", 0)]
                           if section == "gunicorn_saturated" else []),
                        ratio_key="rps", ratio_bases=("none", "ours"))
    if "gunicorn_saturated" in summary:
        print_table("(b) record() inside a gunicorn worker, every call of the run (ns; timed "
                    "in the request, so with the caches the request left; a design's "
                    "background threads are not in it)", summary["gunicorn_saturated"],
                    [("record() p50 ns", "record_in_worker_p50_ns", 0),
                     ("record() p99 ns", "record_in_worker_p99_ns", 0),
                     ("record() mean ns", "record_in_worker_mean_ns", 0)],
                    ratio_key="record_in_worker_mean_ns")
    for p in (1, 2, 4):
        section = f"end_to_end_{p}"
        if section in summary:
            print_table(f"(c) end to end into Redis, {p} producer process(es)", summary[section],
                        [("records/s", "records_per_s", 0),
                         ("refused+retried", "refused_then_retried", 0)],
                        ratio_key="records_per_s")
    if "sink_latency" in summary:
        s = summary["sink_latency"]["ours"]
        print(f"\n(d) ours, record_hit -> file sink line: p50 {s['p50_ms']['median']:.1f} ms "
              f"[{s['p50_ms']['min']:.1f}-{s['p50_ms']['max']:.1f}], p99 "
              f"{s['p99_ms']['median']:.1f} ms [{s['p99_ms']['min']:.1f}-"
              f"{s['p99_ms']['max']:.1f}]")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
