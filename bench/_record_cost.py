"""Figures of one ``record()`` call that do not move with the load of a shared machine.

Two measurements, for the same designs (:data:`DESIGNS`), each design in a
fresh Python process of its own:

- **instructions per call**, counted by ``valgrind --tool=callgrind``
  (Debian's valgrind): the process runs ``n`` and then ``n + delta`` calls
  of the same warmed-up loop and ``(Ir(n + delta) - Ir(n)) / delta`` is the
  count per call, start-up and warm-up cancelled out. ``PYTHONHASHSEED=0``,
  no cache simulation: the count is repeatable on one machine whatever
  else runs on it.
- **cold-cache time per call**: between two calls the process streams a
  fixed buffer (``COLD_BYTES``, 4 MiB: bigger than this machine's L2, as a
  request's own work leaves the caches), then times one call alone with
  ``perf_counter_ns``; p50 and p99 over ``n`` calls. The timer alone
  (``none``, an empty function) is printed as the floor. Twice: with the
  record taken from a list built before the stream (its objects as cold as
  the rest: what the encoder reads then costs a cache miss per object), and
  ``fresh``, the record built after the stream as a request's handler
  builds it (``authz_record``: its dict and values just written, the code,
  the ring and the client's own state cold). Each child runs
  ``COLD_ROUNDS`` times, the designs interleaved, and the medians of the
  rounds' p50 and p99 are printed (one round with ``--quick``).

The designs: ``none``; ``ours`` (``Analytics.record_hit`` into its ring, the
active path) and, when the native extension is built, ``ours_pure``
(``COLLECTOR_PURE_PYTHON=1``); ``deque.append`` (a bare bound
``collections.deque.append``) and ``otel_deque`` (the caller's side of the
OpenTelemetry-style design, :class:`bench._designs.OtelDeque` ``.record``:
its checks and the append, its exporter thread not started); ``msgpack.packb``
and ``ormsgpack.packb`` of the record alone. All take the ~450-byte authz
record (``collector.testing.authz_record``), 1000 of them in turn.

``python -m bench record_hit`` prints both tables and their ratios; ``python
-m bench._record_cost {loop|cold|fresh} DESIGN N DIR`` is one child.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLD_BYTES = 4 << 20
RING_BYTES = 1 << 25  # holds every record a child writes: no drain in the measured loop
WARM_CALLS = 2000
COLD_ROUNDS = 5  # interleaved rounds of the cold-cache children; the medians are printed

_KEEP: list[Any] = []

DESIGNS = ("none", "ours", "ours_pure", "deque.append", "otel_deque", "msgpack.packb",
           "ormsgpack.packb")


def native_built() -> bool:
    try:
        from ringbuf import _native  # noqa: F401
    except ImportError:
        return False
    return True


def active_path() -> str:
    """The path ``ours`` takes in a child: ``native`` or ``pure``."""
    pure = os.environ.get("COLLECTOR_PURE_PYTHON", "") not in ("", "0")
    return "native" if native_built() and not pure else "pure"


def designs() -> list[str]:
    """The designs this build can measure (``ours_pure`` only beside a native ``ours``)."""
    return [d for d in DESIGNS if d != "ours_pure" or native_built()]


def _make(design: str, workdir: str) -> Callable[[Any], Any]:
    if design == "none":
        def nothing(record: Any) -> bool:
            return True
        return nothing
    if design in ("ours", "ours_pure"):
        from collector import Analytics
        rings = Path(workdir) / "rings"
        rings.mkdir(mode=0o700, exist_ok=True)
        a = Analytics({"rings_dir": str(rings), "ring_capacity_bytes": RING_BYTES})
        a.start()
        _KEEP.append(a)  # a client dropped is stopped: its record_hit would only count drops
        return a.record_hit
    if design == "deque.append":
        import collections
        return collections.deque(maxlen=1 << 20).append
    if design == "otel_deque":
        from ._designs import OtelDeque
        # no exporter thread: a batch size it never reaches, so no wake-up per call
        return OtelDeque(None, max_queue_size=1 << 30, max_export_batch_size=1 << 30).record
    if design == "msgpack.packb":
        import msgpack
        return msgpack.packb
    if design == "ormsgpack.packb":
        import ormsgpack
        return ormsgpack.packb
    raise ValueError(f"unknown design {design!r}; known: {', '.join(DESIGNS)}")


def _records() -> list[dict[str, Any]]:
    from collector.testing import authz_record
    return [authz_record(0, i) for i in range(1000)]


def _env(design: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONHASHSEED="0")
    if design == "ours_pure":
        env["COLLECTOR_PURE_PYTHON"] = "1"
    else:
        env.pop("COLLECTOR_PURE_PYTHON", None)
    return env


# -- the children ----------------------------------------------------------------------

def _loop_child(design: str, n: int, workdir: str) -> None:
    """Warm up, then ``n`` calls; the callgrind parent subtracts two of these runs."""
    fn = _make(design, workdir)
    recs = _records()
    for i in range(WARM_CALLS):
        fn(recs[i % 1000])
    for i in range(n):
        fn(recs[i % 1000])
    _check_accepted(design, WARM_CALLS + n)
    sys.stdout.flush()
    os._exit(0)  # no exit handlers: the same work after the loop in every run


def _check_accepted(design: str, calls: int) -> None:
    """Ours must have buffered every call, on the path the design names."""
    for a in _KEEP:
        st = a.stats()
        want = "pure" if design == "ours_pure" else active_path()
        if st.written != calls or st.dropped_in_ring or st.dropped_after_stop or st.path != want:
            raise SystemExit(f"{design}: not every call was buffered on the {want} path: {st}")


def _cold_child(design: str, n: int, workdir: str, fresh: bool = False) -> None:
    """``n`` calls, each after ``COLD_BYTES`` streamed; with ``fresh`` the record is
    built after the stream (as a handler builds it), else taken from a list built
    before: then its own objects are as cold as the rest."""
    from collector.testing import authz_record

    fn = _make(design, workdir)
    recs = _records()
    for i in range(WARM_CALLS):
        fn(recs[i % 1000])
    src = bytes(COLD_BYTES)
    dst = bytearray(COLD_BYTES)
    ns = time.perf_counter_ns
    lat = [0] * n
    import gc
    gc.collect()
    gc.disable()
    for i in range(n):
        dst[:] = src  # stream 4 MiB through the caches, as a request's work would
        r = authz_record(0, i) if fresh else recs[i % 1000]
        t = ns()
        fn(r)
        lat[i] = ns() - t
    gc.enable()
    _check_accepted(design, WARM_CALLS + n)
    lat.sort()
    print(json.dumps({"p50_ns": lat[n // 2], "p99_ns": lat[int(n * 0.99)], "n": n}))
    sys.stdout.flush()
    os._exit(0)


# -- the parents -----------------------------------------------------------------------

def _child_cmd(kind: str, design: str, n: int, workdir: str) -> list[str]:
    return [sys.executable, "-m", "bench._record_cost", kind, design, str(n), workdir]


def _ir(design: str, n: int) -> int:
    """Instructions callgrind counts for a whole child run of ``n`` calls."""
    with tempfile.TemporaryDirectory(prefix="bench-cg-", dir=_tmp_base()) as work:
        out = Path(work) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               "--dump-line=no", "--compress-strings=no",
               *_child_cmd("loop", design, n, work)]
        subprocess.run(cmd, env=_env(design), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=1800)
        m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.M)
        if m is None:
            raise RuntimeError(f"no instruction total in {out}")
        return int(m.group(1))


def callgrind_per_call(design: str, n: int = 1000, delta: int = 10_000) -> float:
    """Instructions per call of ``design`` (module doc)."""
    return (_ir(design, n + delta) - _ir(design, n)) / delta


def cold_cache(design: str, n: int, fresh: bool = False) -> dict[str, Any]:
    """p50/p99 ns of one call after ``COLD_BYTES`` were streamed (module doc)."""
    with tempfile.TemporaryDirectory(prefix="bench-cold-", dir=_tmp_base()) as work:
        kind = "fresh" if fresh else "cold"
        out = subprocess.run(_child_cmd(kind, design, n, work), env=_env(design),
                             check=True, capture_output=True, text=True, timeout=600)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def have_valgrind() -> bool:
    return shutil.which("valgrind") is not None


def _tmp_base() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


def measure(quick: bool, *, callgrind: bool = True) -> dict[str, Any]:
    """Both tables for :func:`designs` (callgrind skipped without valgrind)."""
    out: dict[str, Any] = {"designs": designs(), "cold_bytes": COLD_BYTES,
                           "callgrind": {}, "cold": {}}
    n_cold = 2000 if quick else 10_000
    rounds = 1 if quick else COLD_ROUNDS
    out["fresh"] = {}
    out["cold_rounds"] = rounds
    runs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for r in range(rounds):  # interleaved: the machine's load moves all designs alike
        for design in out["designs"]:
            for fresh in (False, True):
                runs.setdefault((design, fresh), []).append(cold_cache(design, n_cold, fresh))
            print(f"  cold-cache {design} (round {r + 1} of {rounds})", file=sys.stderr)
    for (design, fresh), got in runs.items():
        out["fresh" if fresh else "cold"][design] = {
            "p50_ns": int(statistics.median(g["p50_ns"] for g in got)),
            "p99_ns": int(statistics.median(g["p99_ns"] for g in got)),
            "n": n_cold, "p50_runs": [g["p50_ns"] for g in got]}
    if callgrind and have_valgrind():
        delta = 3000 if quick else 10_000
        for design in out["designs"]:
            if design != "none":
                out["callgrind"][design] = callgrind_per_call(design, delta=delta)
                print(f"  callgrind {design}", file=sys.stderr)
    return out


def report(res: dict[str, Any], active: str) -> list[str]:
    """The two tables and their ratios, as printed lines."""
    cold, cg, fresh = res["cold"], res["callgrind"], res.get("fresh", {})
    lines = [f"\ninstructions per call (callgrind) and cold-cache time per call "
             f"({res['cold_bytes'] >> 20} MiB streamed between calls; 'fresh': the record "
             f"built after the stream, as a handler builds it; medians of "
             f"{res.get('cold_rounds', 1)} interleaved rounds); ours = {active} path:",
             f"  {'design':<18} {'instr/call':>11} {'cold p50':>10} {'cold p99':>10} "
             f"{'fresh p50':>10} {'fresh p99':>10}"]
    for design in res["designs"]:
        ir = cg.get(design)
        c = cold[design]
        f = fresh.get(design)
        tail = f" {f['p50_ns']:>7,} ns {f['p99_ns']:>7,} ns" if f else ""
        lines.append(f"  {design:<18} {f'{ir:,.0f}' if ir else '-':>11} "
                     f"{c['p50_ns']:>7,} ns {c['p99_ns']:>7,} ns{tail}")
    ours = cold["ours"]["p50_ns"]
    lines.append(f"  -> cold-cache p50: ours is {ours / cold['deque.append']['p50_ns']:.1f}x "
                 f"a deque append (target <= 2x), {ours / cold['otel_deque']['p50_ns']:.1f}x "
                 "the OTel-style record()")
    if fresh:
        fo = fresh["ours"]["p50_ns"]
        lines.append(f"  -> with the record built in the request: ours is "
                     f"{fo / fresh['deque.append']['p50_ns']:.1f}x a deque append, "
                     f"{fo / fresh['otel_deque']['p50_ns']:.1f}x the OTel-style record()")
    if cg:
        lines.append(f"  -> instructions: ours is {cg['ours'] / cg['ormsgpack.packb']:.2f}x "
                     "ormsgpack.packb alone (target <= 1.5x), "
                     f"{cg['ours'] / cg['deque.append']:.1f}x a deque append")
    if not cg:
        lines.append("  (valgrind not found: no instruction counts)")
    return lines


if __name__ == "__main__":
    kind, name, count, wd = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if kind == "loop":
        _loop_child(name, count, wd)
    else:
        _cold_child(name, count, wd, fresh=kind == "fresh")
