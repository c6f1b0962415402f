"""The authz app under gunicorn with the analytics design chosen by ``BENCH_DESIGN``.

``gunicorn bench._wsgi:app`` with ``BENCH_DESIGN`` one of
``bench._designs.DESIGNS`` and ``BENCH_REDIS_URL`` / ``BENCH_COLLECTOR_YAML``
for the designs that need them. Each worker process builds its own design
on its first request (after gunicorn forked it), so designs with
background threads or a sender process start them in the worker, never in
the master. The decision (``decide``) and the record's fields are those
of ``examples/authz_app.py``, whose own module-level ``Analytics`` is never
used here (``examples/authz_app.py`` itself always records with ours).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from array import array
from time import perf_counter_ns
from typing import Any

from examples import authz_app as authz

_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "design": None}


def _design() -> Any:
    pid = os.getpid()
    if _state["pid"] != pid:
        with _lock:
            if _state["pid"] != pid:
                from bench._compare_measure import make_design

                d = make_design(os.environ["BENCH_DESIGN"], {
                    "redis_url": os.environ.get("BENCH_REDIS_URL", ""),
                    "collector_yaml": os.environ.get("BENCH_COLLECTOR_YAML", ""),
                })
                d.start()
                atexit.register(d.stop)
                _state["design"] = d
                _state["pid"] = pid
    return _state["design"]


def _record(rec: dict[str, Any]) -> bool:
    return bool(_design().record(rec))


# With BENCH_RECORD_STATS=<dir>, each worker times every record() call (the
# call alone, in the request, with the worker's caches as the request left
# them) and writes p50/p90/p99/mean ns to <dir>/<pid>.json when it exits.
_STATS_DIR = os.environ.get("BENCH_RECORD_STATS")
_lat: array[int] = array("q")


def _timed_record(rec: dict[str, Any]) -> bool:
    d = _design()
    t = perf_counter_ns()
    ok = d.record(rec)
    _lat.append(perf_counter_ns() - t)
    return bool(ok)


def _dump_stats() -> None:
    if not _lat or not _STATS_DIR:
        return
    lat = sorted(_lat)
    n = len(lat)
    stats = {"n": n, "p50_ns": lat[n // 2], "p90_ns": lat[n * 9 // 10],
             "p99_ns": lat[n * 99 // 100], "mean_ns": sum(lat) / n}
    with open(os.path.join(_STATS_DIR, f"{os.getpid()}.json"), "w") as fh:
        json.dump(stats, fh)


if _STATS_DIR:
    atexit.register(_dump_stats)

# examples/authz_app.py's handler, recording through the selected design.
app = authz.make_app(_timed_record if _STATS_DIR else _record)
