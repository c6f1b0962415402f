"""``bench compare`` (b): gunicorn serving the authz app under ``wrk``, one design at a time."""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import psutil

from collector.testing import Daemon, Gunicorn

from . import _harness as h

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
          saturate_conns: int, daemon: Daemon | None = None,
          redis_pid: int | None = None, paced: bool = True) -> dict[str, Any]:
    """A paced run (unless ``paced=False``: the rounds of :mod:`bench._compare_rounds`)
    and a saturated one of the authz app with design ``name``."""
    stats_dir = Path(tempfile.mkdtemp(prefix=f"record-{name}-", dir=workdir))
    g = Gunicorn("bench._wsgi:app", workers=workers, cwd=h.ROOT,
                 args=["-k", "sync", "--backlog", "2048", "--log-level", "warning"],
                 log=workdir / "logs" / f"gunicorn-{name}.log", env={
                     "BENCH_DESIGN": name, "BENCH_REDIS_URL": env.get("redis_url", ""),
                     "BENCH_COLLECTOR_YAML": env.get("collector_yaml", ""),
                     "COLLECTOR_CONFIG": env.get("collector_yaml", ""),
                     "BENCH_RECORD_STATS": str(stats_dir), "PYTHONPATH": str(h.ROOT),
                 }).start()
    url = f"http://127.0.0.1:{g.port}/v1/authz"
    try:
        # warm-up: every worker builds its design
        h.run_wrk(url, duration_s=1, connections=workers * 2, threads=1, body=_WRK_BODY,
                  workdir=workdir)
        paced_run = (h.run_wrk(url, duration_s=duration, connections=2, threads=1,
                               body=_WRK_BODY, pause_ms=2, workdir=workdir) if paced else {})
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
        g.stop(30)
        g.close()
    # record() timed inside the workers over the whole run (warm-up, paced and
    # saturated): the mean over workers of each worker's figure
    per_worker = [json.loads(f.read_text()) for f in stats_dir.glob("*.json")]
    if per_worker:
        for key in ("p50_ns", "p99_ns", "mean_ns"):
            sat[f"record_in_worker_{key}"] = statistics.fmean(w[key] for w in per_worker)
    return {"paced": paced_run, "saturated": sat}
