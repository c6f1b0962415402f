"""``bench compare`` (b): gunicorn serving the authz app under ``wrk``, one design at a time."""

from __future__ import annotations

import json
import os
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


_SCHEDSTAT = os.path.exists("/proc/self/schedstat")


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds the processes' threads ran so far: the scheduler's nanosecond count
    (``/proc/<pid>/task/<tid>/schedstat``; a 2 s run of the daemon at a few hundred
    requests/s is a few clock ticks, too coarse for psutil's ``cpu_times``), else psutil."""
    total = 0.0
    for pid in pids:
        if not _SCHEDSTAT:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
            continue
        try:
            tids = os.listdir(f"/proc/{pid}/task")
            ns = 0
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                        ns += int(fh.read().split()[0])
                except (FileNotFoundError, ProcessLookupError):
                    pass  # the thread ended
            total += ns / 1e9
        except OSError:  # the process is gone
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


class RoundServers:
    """(e)'s servers: one gunicorn per design, started (and warmed up) at its first run
    and kept until :meth:`close`, so the saturated runs of a round follow each other
    within seconds (:mod:`bench._compare_rounds`)."""

    def __init__(self, env: dict[str, str], workdir: Path, workers: int,
                 daemon: Daemon | None = None, redis_pid: int | None = None) -> None:
        self.env, self.workdir, self.workers = env, workdir, workers
        self.daemon, self.redis_pid = daemon, redis_pid
        self.servers: dict[str, Gunicorn] = {}
        self.stats_dirs: dict[str, Path] = {}

    def _server(self, name: str) -> Gunicorn:
        g = self.servers.get(name)
        if g is None:
            stats = self.stats_dirs[name] = Path(tempfile.mkdtemp(prefix=f"rounds-{name}-",
                                                                  dir=self.workdir))
            g = Gunicorn("bench._wsgi:app", workers=self.workers, cwd=h.ROOT,
                         args=["-k", "sync", "--backlog", "2048", "--log-level", "warning"],
                         log=self.workdir / "logs" / f"gunicorn-rounds-{name}.log", env={
                             "BENCH_DESIGN": name,
                             "BENCH_REDIS_URL": self.env.get("redis_url", ""),
                             "BENCH_COLLECTOR_YAML": self.env.get("collector_yaml", ""),
                             "COLLECTOR_CONFIG": self.env.get("collector_yaml", ""),
                             "BENCH_RECORD_STATS": str(stats),
                             "PYTHONPATH": str(h.ROOT)}).start()
            self.servers[name] = g
            h.run_wrk(self._url(g), duration_s=1, connections=self.workers * 2, threads=1,
                      body=_WRK_BODY, workdir=self.workdir)  # every worker builds its design
        return g

    @staticmethod
    def _url(g: Gunicorn) -> str:
        return f"http://127.0.0.1:{g.port}/v1/authz"

    def run(self, name: str, duration: float, connections: int = 16) -> dict[str, Any]:
        """One saturated run of design ``name``: wrk's figures and the CPU per request of
        the processes serving it (its workers; Redis; for ours the daemon), whatever
        else the machine runs (``server_cpu_us_per_request`` is their sum)."""
        g = self._server(name)
        wpids = sorted(g.worker_pids())
        dpids = _tree(self.daemon.pid) if name == "ours" and self.daemon is not None else []
        rpids = [self.redis_pid] if self.redis_pid else []
        c0, d0, r0 = _cpu_seconds(wpids), _cpu_seconds(dpids), _cpu_seconds(rpids)
        m0 = _machine_cpu_seconds()
        sat = h.run_wrk(self._url(g), duration_s=duration, connections=connections, threads=2,
                        body=_WRK_BODY, workdir=self.workdir)
        n = max(1.0, sat["requests"])
        per = {"worker": (_cpu_seconds(wpids) - c0) * 1e6 / n,
               "daemon": (_cpu_seconds(dpids) - d0) * 1e6 / n,
               "redis": (_cpu_seconds(rpids) - r0) * 1e6 / n}
        sat["machine_cpu_us_per_request"] = (_machine_cpu_seconds() - m0) * 1e6 / n
        for k, v in per.items():
            sat[f"{k}_cpu_us_per_request"] = v
        sat["server_cpu_us_per_request"] = sum(per.values())
        return sat

    def close(self) -> dict[str, dict[str, float]]:
        """Stop the servers; per design, ``record()`` timed in its workers over all its
        runs (``record_in_worker_{p50,p99,mean}_ns``: the mean over workers)."""
        for g in self.servers.values():
            g.stop(30)
            g.close()
        self.servers.clear()
        out: dict[str, dict[str, float]] = {}
        for name, d in self.stats_dirs.items():
            per_worker = [json.loads(f.read_text()) for f in d.glob("*.json")]
            if per_worker:
                out[name] = {f"record_in_worker_{k}": statistics.fmean(w[k] for w in per_worker)
                             for k in ("p50_ns", "p99_ns", "mean_ns")}
        return out
