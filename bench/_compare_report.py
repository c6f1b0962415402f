"""``bench compare``: medians and ratios, the chart, and the targets (see ``bench.compare``)."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from ._compare_measure import DAEMON_SETTINGS
from ._compare_rounds import RATIOS
from ._designs import DESIGNS

LABELS = {
    "none": "1 no analytics",
    "ours": "2 ours (ring + daemon)",
    "sync_rpush": "3 sync RPUSH",
    "seed_queue": "4 seed queue+threads",
    "otel_deque": "5 OTel deque+thread",
    "mp_queue": "6 mp.Queue+sender",
}
SHORT = {
    "none": "1 none", "ours": "2 ours", "sync_rpush": "3 sync\nRPUSH",
    "seed_queue": "4 seed\nqueue", "otel_deque": "5 OTel\ndeque", "mp_queue": "6 mp\nQueue",
}

# ---------------------------------------------------------------------------
# reporting


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def _fmt(v: float, digits: int = 0) -> str:
    return f"{v:,.{digits}f}"


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, per_design in raw.items():
        out[section] = {}
        for name, runs in per_design.items():
            if not runs:
                continue
            keys = sorted({k for r in runs for k, v in r.items()
                           if isinstance(v, int | float) and not isinstance(v, bool)})
            out[section][name] = {k: _stats([float(r[k]) for r in runs if k in r])
                                  for k in keys}
    return out


def print_table(title: str, summary: dict[str, Any], cols: list[tuple[str, str, int]],
                ratio_key: str | None = None, ratio_bases: tuple[str, ...] = ("ours",)) -> None:
    """Medians [min-max] per design; then ``ratio_key``'s median / each base's median."""
    print(f"\n{title}")
    header = f"{'design':<26}" + "".join(f"{label:>26}" for label, _, _ in cols)
    bases = [b for b in ratio_bases if ratio_key] if ratio_key else []
    header += "".join(f"{'/ ' + b:>10}" for b in bases)
    print(header)
    for name in DESIGNS:
        if name not in summary:
            continue
        row = f"{LABELS[name]:<26}"
        for _, key, digits in cols:
            s = summary[name].get(key)
            if s is None:
                row += f"{'-':>26}"
            else:
                cell = (f"{_fmt(s['median'], digits)} [{_fmt(s['min'], digits)}-"
                        f"{_fmt(s['max'], digits)}]")
                row += f"{cell:>26}"
        for b in bases:
            base = summary.get(b, {}).get(ratio_key or "", {}).get("median")
            v = summary[name].get(ratio_key or "", {}).get("median")
            row += f"{v / base:>9.2f}x" if base and v is not None else f"{'-':>10}"
        print(row)


def chart(summary: dict[str, Any], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("compare: matplotlib is not installed (pip install .[bench]); no chart")
        return None
    fig, grid = plt.subplots(2, 2, figsize=(13, 9))
    axes = list(grid.flat)
    colors = ["#999999", "#2a7ab9", "#d9534f", "#f0ad4e", "#5cb85c", "#8e6bbf"]
    cmap = dict(zip(DESIGNS, colors, strict=True))

    def bars(ax: Any, section: str, key: str, ylabel: str, ttl: str,
             log: bool = False) -> None:
        data = summary.get(section, {})
        names = [n for n in DESIGNS if n in data and key in data[n]]
        if not names:
            ax.set_axis_off()
            ax.set_title(ttl + " (not measured)", fontsize=11)
            return
        med = [data[n][key]["median"] for n in names]
        lo = [data[n][key]["median"] - data[n][key]["min"] for n in names]
        hi = [data[n][key]["max"] - data[n][key]["median"] for n in names]
        xs = range(len(names))
        ax.bar(xs, med, yerr=[lo, hi], capsize=4, color=[cmap[n] for n in names])
        ax.set_xticks(list(xs))
        ax.set_xticklabels([SHORT[n] for n in names], fontsize=9)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(ttl, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        for x, v in zip(xs, med, strict=True):
            ax.annotate(f"{v:,.0f}" if v >= 100 else f"{v:.2f}", (x, v), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")

    bars(axes[0], "gunicorn_saturated", "rps", "requests/s",
         "(b) gunicorn saturated: requests/s (higher is better)")
    bars(axes[1], "gunicorn_saturated", "p99_ms", "ms",
         "(b) gunicorn saturated: p99 latency (lower is better)")
    e2e = "end_to_end_4" if summary.get("end_to_end_4") else "end_to_end_1"
    bars(axes[2], e2e, "records_per_s", "records/s",
         f"(c) end to end into Redis, {e2e[-1]} producer process(es)")
    bars(axes[3], "loop", "cpu_ns_per_record", "ns (log scale)",
         "(a) app-process CPU per record (lower is better)", log=True)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def targets(summary: dict[str, Any]) -> list[str]:
    out = []

    def med(section: str, name: str, key: str) -> float | None:
        return summary.get(section, {}).get(name, {}).get(key, {}).get("median")

    floor, ours = med("gunicorn_saturated", "none", "rps"), med("gunicorn_saturated", "ours",
                                                               "rps")
    if floor and ours:
        ok = ours >= 0.97 * floor
        line = (f"ours keeps {ours / floor:.1%} of design 1's saturated requests/s "
                f"(>= 97%): {'met' if ok else 'NOT met'}")
        w_floor = med("gunicorn_saturated", "none", "machine_cpu_us_per_request")
        w_ours = med("gunicorn_saturated", "ours", "machine_cpu_us_per_request")
        if w_floor and w_ours:
            line += (f"; machine CPU per request {w_ours:.0f} us vs {w_floor:.0f} us "
                     f"({w_ours / w_floor - 1:+.1%})")
        out.append(line)
    cpu_ours = med("loop", "ours", "cpu_ns_per_record")
    for name, factor in (("seed_queue", 2), ("otel_deque", 2), ("sync_rpush", 30)):
        other = med("loop", name, "cpu_ns_per_record")
        if cpu_ours and other:
            ok = other >= factor * cpu_ours
            out.append(f"app CPU per record: {LABELS[name]} / ours = {other / cpu_ours:.1f}x "
                       f"(>= {factor}x): {'met' if ok else 'NOT met'}")
    best = max((med(f"end_to_end_{p}", "ours", "records_per_s") or 0) for p in (1, 2, 4))
    if best:
        out.append(f"ours end to end into Redis: {best:,.0f} records/s (>= 300,000): "
                   f"{'met' if best >= 300_000 else 'NOT met'}")
    return out


def report(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\ncompare: medians [min-max] over {args.repeat} repeat(s); collector-daemon: "
          + ", ".join(f"{k}={v}" for k, v in DAEMON_SETTINGS.items()))
    if "loop" in summary:
        print_table("(a) producer cost in a tight loop (record() per call, app-process CPU per "
                    "accepted record incl. background threads)", summary["loop"],
                    [("record() p50 ns", "p50_ns", 0), ("record() p99 ns", "p99_ns", 0),
                     ("app CPU ns/record", "cpu_ns_per_record", 0),
                     ("refused+retried", "refused_then_retried", 0)],
                    ratio_key="cpu_ns_per_record")
    for section, ttl in (("gunicorn_paced", "(b) gunicorn, paced (2 connections, 2 ms pause)"),
                         ("gunicorn_saturated", "(b) gunicorn, saturated (16 connections)")):
        if section in summary:
            s = summary[section]
            print_table(ttl + "; last columns: requests/s relative to design 1 and to ours", s,
                        [("requests/s", "rps", 0), ("p50 ms", "p50_ms", 2),
                         ("p99 ms", "p99_ms", 2)]
                        + ([("worker CPU us/req", "worker_cpu_us_per_request", 0),
                            ("daemon CPU us/req", "daemon_cpu_us_per_request", 1),
                            ("redis CPU us/req", "redis_cpu_us_per_request", 1),
                            ("machine CPU us/req", "machine_cpu_us_per_request", 0)]
                           if section == "gunicorn_saturated" else []),
                        ratio_key="rps", ratio_bases=("none", "ours"))
    if "gunicorn_saturated" in summary:
        print_table("(b) record() inside a gunicorn worker, every call of the run (ns; timed "
                    "in the request, so with the caches the request left; a design's "
                    "background threads are not in it)", summary["gunicorn_saturated"],
                    [("record() p50 ns", "record_in_worker_p50_ns", 0),
                     ("record() p99 ns", "record_in_worker_p99_ns", 0),
                     ("record() mean ns", "record_in_worker_mean_ns", 0)],
                    ratio_key="record_in_worker_mean_ns")
    for p in (1, 2, 4):
        section = f"end_to_end_{p}"
        if section in summary:
            print_table(f"(c) end to end into Redis, {p} producer process(es)", summary[section],
                        [("records/s", "records_per_s", 0),
                         ("refused+retried", "refused_then_retried", 0)],
                        ratio_key="records_per_s")
    if "sink_latency" in summary:
        s = summary["sink_latency"]["ours"]
        print(f"\n(d) ours, record_hit -> file sink line: p50 {s['p50_ms']['median']:.1f} ms "
              f"[{s['p50_ms']['min']:.1f}-{s['p50_ms']['max']:.1f}], p99 "
              f"{s['p99_ms']['median']:.1f} ms [{s['p99_ms']['min']:.1f}-"
              f"{s['p99_ms']['max']:.1f}]")
    if "saturated_rounds" in summary:
        print_table("(e) gunicorn saturated, interleaved rounds (one run per design per round; "
                    "server CPU: workers + daemon + Redis)",
                    summary["saturated_rounds"],
                    [("requests/s", "rps", 0),
                     ("server CPU us/req", "server_cpu_us_per_request", 0),
                     ("worker CPU us/req", "worker_cpu_us_per_request", 0),
                     ("daemon CPU us/req", "daemon_cpu_us_per_request", 1),
                     ("redis CPU us/req", "redis_cpu_us_per_request", 1),
                     ("machine CPU us/req", "machine_cpu_us_per_request", 0)],
                    ratio_key="rps", ratio_bases=("none", "ours"))
        if "rounds_record" in summary:
            print_table("(e) record() inside the rounds' workers, every call (ns)",
                        summary["rounds_record"],
                        [("record() p50 ns", "record_in_worker_p50_ns", 0),
                         ("record() p99 ns", "record_in_worker_p99_ns", 0),
                         ("record() mean ns", "record_in_worker_mean_ns", 0)])
        for a, b in RATIOS:
            for suffix, what in (("", "requests/s"), (" cpu", "requests/s at equal CPU")):
                r = summary.get("saturated_paired", {}).get(f"{a}/{b}{suffix}")
                if r:
                    print(f"  {LABELS[a]} / {LABELS[b]}, {what}: median of {r['n']} paired "
                          f"ratios {r['median']:.3f} [{r['min']:.3f}-{r['max']:.3f}], 95% "
                          f"interval of the median [{r['ci_low']:.3f}-{r['ci_high']:.3f}]")
