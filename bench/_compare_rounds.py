"""``bench compare`` (e): the saturated-throughput target, judged on paired rounds.

A single saturated gunicorn run on the shared 2-core machine varies by 10%
on a quiet machine and by much more under load, more than the difference
the target is about. So the target is judged on ``--rounds`` (10; 3 with
``--quick``) rounds of none / ours / OTel-style, one saturated run of
``--round-seconds`` (5) each, the designs' order rotated from one round to
the next so that none of them always goes first. Each design's gunicorn is
started once and kept (:class:`bench._compare_serve.RoundServers`), so the
runs of a round follow each other within seconds. Each round gives paired
ratios (ours / none, OTel / none, ours / OTel) of runs that share whatever
else the machine was doing then; the verdict is the median of each ratio
over the rounds (:func:`paired`), printed with its min and max and a
distribution-free 95% interval of the median (order statistics of the
binomial, :func:`median_interval`): a verdict whose interval contains the
threshold is printed as not decided by this run.

Requests/s depend on the share of the CPUs the servers get, which other
load on the machine takes. A second, steadier figure per run is the CPU the
processes serving it spent per request (``server_cpu_us_per_request``: the
workers, Redis and for ours the daemon, from ``/proc``), whatever else
runs; on a machine they had to themselves, saturated throughput is the
cores over it. Its paired ratio ``cpu none / cpu ours`` (capacity ratio:
the requests/s ours keeps at equal CPU) is judged the same way.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

ROUND_DESIGNS = ("none", "ours", "otel_deque")
RATIOS = (("ours", "none"), ("otel_deque", "none"), ("ours", "otel_deque"))
TARGET_OURS_VS_NONE = 0.99
CPU_KEY = "server_cpu_us_per_request"


def round_order(names: list[str], r: int) -> list[str]:
    """The designs of round ``r`` (those of :data:`ROUND_DESIGNS` in ``names``), rotated."""
    chosen = [n for n in ROUND_DESIGNS if n in names]
    if not chosen:
        return []
    k = r % len(chosen)
    return chosen[k:] + chosen[:k]


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of ``values``: order statistics
    ``k`` and ``n + 1 - k`` with the largest ``k`` whose coverage, by the binomial
    distribution with p = 1/2, is at least ``level`` (n = 10: the 2nd and 9th
    values, 97.9%). Fewer than 6 values: their min and max."""
    xs = sorted(values)
    n = len(xs)
    k = 0
    for j in range(1, n // 2 + 1):
        tail = sum(math.comb(n, i) for i in range(j)) / 2 ** n  # P(B < j)
        if 1 - 2 * tail >= level:
            k = j
    if k == 0:
        return xs[0], xs[-1]
    return xs[k - 1], xs[n - k]


def _stats(vals: list[float]) -> dict[str, Any]:
    lo, hi = median_interval(vals)
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "ci_low": lo, "ci_high": hi, "n": len(vals)}


def paired(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per ratio ``a/b``: the median, min, max and 95% interval over the rounds both ran
    in, of requests/s (``a/b``) and of the capacity at equal CPU (``a/b cpu``: b's CPU
    per request over a's).

    ``rounds[name]`` is that design's saturated results in round order, each
    with ``round`` (its index), ``rps`` and (for ``cpu``) :data:`CPU_KEY`.
    """
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for name, runs in rounds.items():
        for run in runs:
            if run.get("rps"):
                by_round.setdefault(int(run["round"]), {})[name] = run
    out: dict[str, Any] = {"rounds": len(by_round)}
    for a, b in RATIOS:
        both = [r for r in by_round.values() if a in r and b in r]
        vals = [r[a]["rps"] / r[b]["rps"] for r in both]
        if vals:
            out[f"{a}/{b}"] = _stats(vals)
        cpu = [r[b][CPU_KEY] / r[a][CPU_KEY] for r in both
               if r[a].get(CPU_KEY) and r[b].get(CPU_KEY)]
        if cpu:
            out[f"{a}/{b} cpu"] = _stats(cpu)
    return out


def _decided(s: dict[str, Any], threshold: float, pct: bool) -> str:
    def f(v: float) -> str:
        return f"{v:.1%}" if pct else f"{v:.3f}"

    if s["ci_low"] >= threshold or s["ci_high"] < threshold:
        return f"95% interval of the median [{f(s['ci_low'])}-{f(s['ci_high'])}]: decided"
    return (f"95% interval of the median [{f(s['ci_low'])}-{f(s['ci_high'])}] contains "
            f"{f(threshold)}: NOT decided by this run")


def verdicts(p: dict[str, Any]) -> list[str]:
    """The target lines from :func:`paired`'s result: the verdict on the median, then
    whether the median's interval decides it."""
    out = []
    for key, what in (("ours/none", "requests/s"), ("ours/none cpu", "requests/s at equal CPU")):
        on = p.get(key)
        if on:
            ok = on["median"] >= TARGET_OURS_VS_NONE
            out.append(f"ours keeps {on['median']:.1%} of no analytics' saturated {what}, "
                       f"median of {on['n']} paired rounds [{on['min']:.1%}-{on['max']:.1%}] "
                       f"(>= {TARGET_OURS_VS_NONE:.0%}): {'met' if ok else 'NOT met'}; "
                       + _decided(on, TARGET_OURS_VS_NONE, True))
    for key, what in (("ours/otel_deque", "requests/s"),
                      ("ours/otel_deque cpu", "requests/s at equal CPU")):
        oo = p.get(key)
        if oo:
            ok = oo["median"] > 1.0
            out.append(f"ours / OTel-style saturated {what} = {oo['median']:.3f}, median of "
                       f"{oo['n']} paired rounds [{oo['min']:.3f}-{oo['max']:.3f}] (> 1, "
                       f"ahead): {'met' if ok else 'NOT met'}; " + _decided(oo, 1.0, False))
    return out
