"""What the benchmarks share beyond ``collector.testing``: their daemon settings, wrk, children.

Servers and services (``redis-server``, ``collector-daemon``,
``collector-pump``, ``gunicorn``) come from :mod:`collector.testing`, as in
the test suite; this module adds the benchmarks' own daemon settings and
log layout, ``wrk`` runs, and measurements in a fresh spawned process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from collector.testing import Daemon, Pump

__all__ = ["BENCH_DAEMON", "Daemon", "Pump", "daemon", "parse_wrk", "pump", "run_in_child",
           "run_wrk"]

ROOT = Path(__file__).resolve().parent.parent

# The daemon of the benchmarks: slower intervals than the test suite's
# (collector.testing.QUICK_DAEMON), closer to what a deployment runs.
BENCH_DAEMON: dict[str, Any] = {
    "pool_size": 2,
    "flush_interval_ms": 50,
    "max_flush_interval_ms": 200,
    "scan_interval_ms": 200,
    "retry_max_ms": 1000,
}


def daemon(workdir: Path, redis_url: str | None, **overrides: Any) -> Daemon:
    """``collector-daemon`` with :data:`BENCH_DAEMON` and ``overrides``, log in ``logs/``."""
    return Daemon.write(workdir, redis_url, base=BENCH_DAEMON,
                        log=workdir / "logs" / "daemon.log", **overrides)


def pump(workdir: Path, redis_url: str, pumps: Mapping[str, Any], *, log: Path | None = None,
         **overrides: Any) -> Pump:
    """``collector-pump`` with the shipped defaults and ``overrides``, log in ``logs/``."""
    return Pump.write(workdir, redis_url, pumps, base={},
                      log=log or workdir / "logs" / "pump.log", **overrides)


# ---------------------------------------------------------------------------
# wrk


_PACED_LUA = """
local pause = tonumber(os.getenv("WRK_PAUSE_MS") or "0")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("WRK_BODY") or "{}"
function delay()
  return pause
end
"""


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, *, duration_s: float, connections: int, threads: int, body: str,
            pause_ms: float = 0.0, workdir: Path) -> dict[str, float]:
    """Run ``wrk --latency`` POSTing ``body``; pause ``pause_ms`` per connection between
    requests (wrk measures latency from the write, so the pause is not counted)."""
    script = workdir / "wrk_paced.lua"
    script.write_text(_PACED_LUA)
    env = {**os.environ, "WRK_PAUSE_MS": str(int(pause_ms)), "WRK_BODY": body}
    out = subprocess.run(
        ["wrk", "--latency", "-t", str(threads), "-c", str(connections),
         "-d", f"{max(1, round(duration_s))}s", "-s", str(script), url],
        capture_output=True, text=True, env=env, timeout=duration_s + 60, check=False)
    return parse_wrk(out.stdout + out.stderr)


def parse_wrk(text: str) -> dict[str, float]:
    res: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{text}")
    res["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if m:
            res[f"p{pct}_ms"] = _ms(m.group(1), m.group(2))
    m = re.search(r"(\d+) requests in", text)
    res["requests"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    res["non2xx"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    res["socket_errors"] = float(sum(int(g) for g in m.groups())) if m else 0.0
    return res


# ---------------------------------------------------------------------------
# a measurement in a fresh process


def run_in_child(target: Callable[..., None], *args: Any, timeout: float = 300) -> dict[str, Any]:
    """Run ``target(*args, conn)`` in a spawned process; return what it sent on ``conn``."""
    ctx = mp.get_context("spawn")
    rx, tx = ctx.Pipe(duplex=False)
    p = ctx.Process(target=target, args=(*args, tx))
    p.start()
    try:
        if not rx.poll(timeout):
            raise TimeoutError(f"{target.__name__}{args[:1]} gave no result in {timeout}s")
        res = rx.recv()
    finally:
        p.join(60)
        if p.is_alive():
            p.kill()
            p.join()
    if "error" in res:
        raise RuntimeError(f"{target.__name__} {args[0]}: {res['error']}")
    return res
