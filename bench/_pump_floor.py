"""Floors and CPU figures for ``bench/pump.py``.

Floors are measured in the bench's own process on the records of the stream
(best of 15, CPU time, so other load on the machine inflates them less than a
wall-clock figure; with the workers' own GC and malloc settings,
``pump._worker.tune_process``, so a floor is not inflated by page faults the
workers do not take): *decode* is ``ormsgpack.unpackb`` of each record alone,
*decode + encoder* adds the sink's own encoder of the decoded fields
(:data:`ENCODERS`; none for ``null``). A floor is records/s of one core doing
only that. A worker's CPU per record is the CPU time its processes spent from
the first delivery to the last acknowledgement (``/proc``), over the records;
set beside the decode floor's CPU per record it says how much a worker costs
beyond decoding, whatever else the machine is doing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import ormsgpack

from pump._worker import tune_process
from pump.sinks._values import json_default

_LINE = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_APPEND_NEWLINE


def _json_line(data: Any) -> bytes:
    return orjson.dumps(data, default=json_default, option=_LINE)


#: The encoder a sink cannot do without (None: it encodes nothing). A sink not
#: listed gets orjson (its records as JSON).
ENCODERS: dict[str, Callable[[Any], bytes] | None] = {
    "null": None,
    "file": _json_line,
    "postgres": _json_line,  # the record column's JSON text
}


def cpu_per_record(fn: Callable[[], object], n: int, repeat: int = 5) -> float:
    """Best CPU seconds of ``fn()`` over ``repeat`` runs, per record (ns)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / n * 1e9


def floors(raws: Sequence[bytes], sinks: Sequence[str], repeat: int = 15
           ) -> dict[str, tuple[float, float]]:
    """Per sink (decode, decode + the sink's encoder) in records/s of one core.

    The decode floor is measured once for all, the runs of the sinks'
    encoders interleaved with it (best of ``repeat`` each), so that load
    which comes and goes touches every floor alike.
    """
    tune_process()
    unpack = ormsgpack.unpackb
    best: dict[str, float] = {}
    jobs: dict[str, Callable[[], object]] = {"": lambda: [unpack(raw) for raw in raws]}
    for sink in sinks:
        encode = ENCODERS.get(sink, _json_line)
        if encode is not None:
            jobs[sink] = lambda encode=encode: [encode(unpack(raw)) for raw in raws]
    for _ in range(repeat):
        for key, job in jobs.items():
            ns = cpu_per_record(job, len(raws), repeat=1)
            best[key] = min(best.get(key, ns), ns)
    decode = 1e9 / best[""]
    return {sink: (decode, 1e9 / best[sink] if sink in best else decode) for sink in sinks}


_TICK = os.sysconf("SC_CLK_TCK")


def descendants_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the live descendants of ``pid`` (the workers)."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        child = int(entry.name)
        children.setdefault(int(fields[1]), []).append(child)
        cpu[child] = (int(fields[11]) + int(fields[12])) / _TICK
    total, todo = 0.0, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total
