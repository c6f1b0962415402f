"""``bench compare`` (e): the saturated-throughput target, judged on paired rounds.

A single saturated gunicorn run on the shared 2-core machine varies by about
10%, more than the difference the target is about. So the target is judged
on ``--rounds`` (10; 3 with ``--quick``) rounds of none / ours / OTel-style,
one saturated run each (no paced run), the designs' order rotated from one
round to the next so that none of them always goes first. Each round gives
paired ratios (ours / none, OTel / none, ours / OTel) of runs a few seconds
apart, which share whatever else the machine was doing then; the verdict is
the median of each ratio over the rounds (:func:`paired`), printed with its
min and max.
"""

from __future__ import annotations

import statistics
from typing import Any

ROUND_DESIGNS = ("none", "ours", "otel_deque")
RATIOS = (("ours", "none"), ("otel_deque", "none"), ("ours", "otel_deque"))
TARGET_OURS_VS_NONE = 0.99


def round_order(names: list[str], r: int) -> list[str]:
    """The designs of round ``r`` (those of :data:`ROUND_DESIGNS` in ``names``), rotated."""
    chosen = [n for n in ROUND_DESIGNS if n in names]
    if not chosen:
        return []
    k = r % len(chosen)
    return chosen[k:] + chosen[:k]


def paired(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per ratio ``a/b``: the median, min and max over the rounds both ran in.

    ``rounds[name]`` is that design's saturated results in round order, each
    with ``round`` (its index) and ``rps``.
    """
    by_round: dict[int, dict[str, float]] = {}
    for name, runs in rounds.items():
        for run in runs:
            if run.get("rps"):
                by_round.setdefault(int(run["round"]), {})[name] = float(run["rps"])
    out: dict[str, Any] = {"rounds": len(by_round)}
    for a, b in RATIOS:
        vals = [r[a] / r[b] for r in by_round.values() if a in r and b in r]
        if vals:
            out[f"{a}/{b}"] = {"median": statistics.median(vals), "min": min(vals),
                               "max": max(vals), "n": len(vals)}
    return out


def verdicts(p: dict[str, Any]) -> list[str]:
    """The target lines from :func:`paired`'s result."""
    out = []
    on = p.get("ours/none")
    if on:
        ok = on["median"] >= TARGET_OURS_VS_NONE
        out.append(f"ours keeps {on['median']:.1%} of no analytics' saturated requests/s, "
                   f"median of {on['n']} paired rounds [{on['min']:.1%}-{on['max']:.1%}] "
                   f"(>= {TARGET_OURS_VS_NONE:.0%}): {'met' if ok else 'NOT met'}")
    oo = p.get("ours/otel_deque")
    if oo:
        ok = oo["median"] > 1.0
        out.append(f"ours / OTel-style saturated requests/s = {oo['median']:.3f}, median of "
                   f"{oo['n']} paired rounds [{oo['min']:.3f}-{oo['max']:.3f}] (> 1, ahead): "
                   f"{'met' if ok else 'NOT met'}")
    return out
