"""The authz app under gunicorn with every ``record()`` call traced (``bench record_tail``).

As :mod:`bench._wsgi` (``BENCH_DESIGN``, ``BENCH_REDIS_URL``,
``BENCH_COLLECTOR_YAML``), and with ``BENCH_TAIL_DIR`` each worker keeps,
per call: the time of the call alone (``perf_counter_ns`` around it, as
``bench._wsgi`` times it), whether a garbage collection ran in it
(``gc.callbacks``), whether ours' careful Python path ran in it (the native
writer's ``stop``, read after each call, moved since the last: only the
careful path moves it) or only the native writer's look at its file (its
``deadline`` moved, not ``stop``),
and with ``BENCH_TAIL_RUSAGE=1`` the minor page faults and the voluntary and
involuntary context switches of the worker's thread during the call
(``getrusage(RUSAGE_THREAD)`` just before and just after it, outside the
timed window). It writes ``<pid>.json`` there when it exits.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import resource
from array import array
from time import perf_counter_ns
from typing import Any

from examples import authz_app as authz

from ._wsgi import _design

_DIR = os.environ["BENCH_TAIL_DIR"]
_RUSAGE = os.environ.get("BENCH_TAIL_RUSAGE") == "1"
_cols: dict[str, array[int]] = {k: array("q") for k in
                                ("ns", "gc", "careful", "look", "minflt", "nvcsw", "nivcsw")}
_gcs = [0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gcs[0] += 1


gc.callbacks.append(_on_gc)
_native: list[Any] = []  # ours' native writer, once known


def _native_writer(d: Any) -> Any:
    if not _native:
        core = getattr(getattr(d, "analytics", None), "_core", None)
        w = getattr(core, "_writer", None)
        _native.append(getattr(w, "native_writer", None))
    return _native[0]


_last: list[Any] = [None]  # the native writer's (stop, deadline) after the last call


def _record(rec: dict[str, Any]) -> bool:
    d = _design()
    g0 = _gcs[0]
    if _RUSAGE:
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
    t = perf_counter_ns()
    ok = d.record(rec)
    ns = perf_counter_ns() - t
    c = _cols
    if _RUSAGE:
        r1 = resource.getrusage(resource.RUSAGE_THREAD)
        c["minflt"].append(r1.ru_minflt - r0.ru_minflt)
        c["nvcsw"].append(r1.ru_nvcsw - r0.ru_nvcsw)
        c["nivcsw"].append(r1.ru_nivcsw - r0.ru_nivcsw)
    c["ns"].append(ns)
    c["gc"].append(_gcs[0] - g0)
    # read after the call only (not before: that would warm the writer's line)
    nw = _native_writer(d)
    mark = (nw.stop, nw.deadline) if nw is not None else None
    last = _last[0]
    careful = mark is not None and (last is None or mark[0] != last[0])
    c["careful"].append(int(careful))
    c["look"].append(int(not careful and mark != last))
    _last[0] = mark
    return bool(ok)


def _dump() -> None:
    if _cols["ns"]:
        with open(os.path.join(_DIR, f"{os.getpid()}.json"), "w") as fh:
            json.dump({k: list(v) for k, v in _cols.items()}, fh)


atexit.register(_dump)
app = authz.make_app(_record)
