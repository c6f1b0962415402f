"""``python -m bench record_tail [--quick]``: where the tail of record() in a request comes from.

The authz app under gunicorn (sync workers, :mod:`bench._wsgi_tail`) for
``none`` (the timer alone), ``ours`` and ``otel_deque``, interleaved over
``--repeat`` rounds, each round a paced run (2 connections, 2 ms pause) then
a saturated one (16 connections), as ``bench compare`` serves them. Every
``record()`` call is traced: its time, and whether a garbage collection,
ours' careful Python path, ours' look at its ring file (in C, once per
``check_interval_s``), a minor page fault or a context switch happened
in it (faults and switches only with ``--rusage``: two ``getrusage`` calls
around each call, outside the timed window, which themselves disturb the
caches a little; run both ways).

Printed per design: p50/p90/p99/p99.9 and p99/p50 over every call; of the
calls above that design's p99, the share with each cause; and p50/p99 of
the calls with none of them (what remains is the state of the caches and
TLBs the request left, and interrupts, which no flag here sees).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from collector.testing import Gunicorn, RedisServer

from . import _harness as h
from ._compare_measure import DAEMON_SETTINGS
from ._compare_serve import _WRK_BODY

DESIGNS = ("none", "ours", "otel_deque")
CAUSES = ("gc", "careful", "look", "minflt", "csw")


def _serve(name: str, env: dict[str, str], workdir: Path, workers: int, seconds: float,
           rusage: bool, out: Path) -> None:
    g = Gunicorn("bench._wsgi_tail:app", workers=workers, cwd=h.ROOT,
                 args=["-k", "sync", "--backlog", "2048", "--log-level", "warning"],
                 log=workdir / "logs" / f"gunicorn-tail-{name}.log", env={
                     "BENCH_DESIGN": name, "BENCH_REDIS_URL": env["redis_url"],
                     "BENCH_COLLECTOR_YAML": env["collector_yaml"],
                     "COLLECTOR_CONFIG": env["collector_yaml"], "BENCH_TAIL_DIR": str(out),
                     "BENCH_TAIL_RUSAGE": "1" if rusage else "0", "PYTHONPATH": str(h.ROOT),
                 }).start()
    url = f"http://127.0.0.1:{g.port}/v1/authz"
    try:
        h.run_wrk(url, duration_s=1, connections=workers * 2, threads=1, body=_WRK_BODY,
                  workdir=workdir)  # warm-up: every worker builds its design
        h.run_wrk(url, duration_s=seconds, connections=2, threads=1, body=_WRK_BODY,
                  pause_ms=2, workdir=workdir)
        h.run_wrk(url, duration_s=seconds, connections=16, threads=2, body=_WRK_BODY,
                  workdir=workdir)
    finally:
        g.stop(30)
        g.close()


def _load(out: Path) -> dict[str, list[int]]:
    cols: dict[str, list[int]] = {}
    for f in sorted(out.glob("*.json")):
        for k, v in json.loads(f.read_text()).items():
            cols.setdefault(k, []).extend(v)
    return cols


def _pct(sorted_ns: list[int], q: float) -> int:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * q))] if sorted_ns else 0


def analyse(cols: dict[str, list[int]]) -> dict[str, Any]:
    """Percentiles, the causes of the calls above p99 and the clean calls' percentiles."""
    ns = cols["ns"]
    n = len(ns)
    causes = {"gc": cols["gc"], "careful": cols["careful"], "look": cols["look"]}
    if cols.get("minflt"):
        causes["minflt"] = cols["minflt"]
        causes["csw"] = [a + b for a, b in zip(cols["nvcsw"], cols["nivcsw"], strict=True)]
    s = sorted(ns)
    p99 = _pct(s, 0.99)
    tail = [i for i in range(n) if ns[i] > p99]
    clean = sorted(ns[i] for i in range(n) if not any(c[i] for c in causes.values()))
    return {
        "n": n, "p50": _pct(s, 0.5), "p90": _pct(s, 0.9), "p99": p99, "p999": _pct(s, 0.999),
        "tail_n": len(tail),
        "tail_share": {k: sum(1 for i in tail if c[i]) / max(1, len(tail))
                       for k, c in causes.items()},
        "all_share": {k: sum(1 for x in c if x) / max(1, n) for k, c in causes.items()},
        "tail_none": sum(1 for i in tail if not any(c[i] for c in causes.values()))
        / max(1, len(tail)),
        "clean_n": len(clean), "clean_p50": _pct(clean, 0.5), "clean_p99": _pct(clean, 0.99),
    }


def report(res: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"  {'design':<11} {'calls':>8} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>8} "
             f"{'p99/p50':>7}   above p99: {'  '.join(f'{c:>7}' for c in CAUSES)}  {'none':>5}"
             f"   clean p50/p99 (p99/p50)"]
    for name, r in res.items():
        share = "  ".join(f"{r['tail_share'][c]:>6.0%} " if c in r["tail_share"] else f"{'-':>7}"
                          for c in CAUSES)
        lines.append(
            f"  {name:<11} {r['n']:>8,} {r['p50']:>7,} {r['p90']:>7,} {r['p99']:>7,} "
            f"{r['p999']:>8,} {r['p99'] / max(1, r['p50']):>6.1f}x   {'':>11}{share}  "
            f"{r['tail_none']:>5.0%}   {r['clean_p50']:,}/{r['clean_p99']:,} "
            f"({r['clean_p99'] / max(1, r['clean_p50']):.1f}x)")
    lines.append("  (ns; 'above p99': share of the calls slower than that design's p99 with "
                 "each cause; 'all calls' shares are in the JSON)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench record_tail", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s runs")
    ap.add_argument("--repeat", type=int, default=None, help="interleaved rounds (default 3)")
    ap.add_argument("--rusage", action="store_true",
                    help="also count page faults and context switches per call")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    seconds = 2.0 if args.quick else 5.0
    workdir = Path(tempfile.mkdtemp(prefix="bench-record-tail-"))
    (workdir / "logs").mkdir()
    redis = RedisServer(workdir / "redis", appendonly=False).start()
    daemon = h.daemon(workdir, redis.url, **DAEMON_SETTINGS)
    env = {"redis_url": redis.url, "collector_yaml": str(daemon.config)}
    daemon.start()
    outs = {name: workdir / f"trace-{name}" for name in DESIGNS}
    try:
        for out in outs.values():
            out.mkdir()
        for r in range(repeat):
            order = DESIGNS if r % 2 == 0 else tuple(reversed(DESIGNS))
            for name in order:
                rdir = outs[name] / str(r)
                rdir.mkdir()
                _serve(name, env, workdir, args.workers, seconds, args.rusage, rdir)
        res = {}
        for name, out in outs.items():
            cols: dict[str, list[int]] = {}
            for rdir in sorted(out.iterdir()):
                for k, v in _load(rdir).items():
                    cols.setdefault(k, []).extend(v)
            res[name] = analyse(cols)
        print(f"record() inside gunicorn requests ({args.workers} sync workers, {repeat} "
              f"round(s) of paced + saturated {seconds:.0f} s runs, rusage "
              f"{'on' if args.rusage else 'off'}; {time.strftime('%Y-%m-%d %H:%M')}):")
        print("\n".join(report(res)))
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
        return 0
    finally:
        daemon.stop()
        daemon.close()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
