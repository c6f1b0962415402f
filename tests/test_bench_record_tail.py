"""``bench record_tail``'s attribution of the calls above p99 (no gunicorn: its analysis)."""

from __future__ import annotations

from bench.record_tail import analyse, report


def test_the_calls_above_p99_are_put_down_to_what_happened_in_them() -> None:
    n = 1000
    ns = [1000] * n
    flags = {k: [0] * n for k in ("gc", "careful", "look", "minflt", "nvcsw", "nivcsw")}
    for i in range(990, 1000):  # the ten slowest: 4 looks, 3 careful, 1 switch, 2 nothing
        ns[i] = 50_000 + i
    for i in range(990, 994):
        flags["look"][i] = 1
    for i in range(994, 997):
        flags["careful"][i] = 1
    flags["nivcsw"][997] = 1
    flags["look"][10] = 1  # a look that cost nothing is not in the tail
    r = analyse({"ns": ns, **flags})
    assert r["p50"] == 1000 and r["tail_n"] == 9  # above p99: ns[990] is the p99 itself
    assert r["tail_share"]["look"] == 3 / 9 and r["tail_share"]["careful"] == 3 / 9
    assert r["tail_share"]["csw"] == 1 / 9 and r["tail_none"] == 2 / 9
    assert r["all_share"]["look"] == 5 / n
    assert r["clean_n"] == n - 9 and r["clean_p99"] == 1000
    assert len(report({"ours": r})) == 3


def test_without_rusage_there_are_no_fault_or_switch_columns() -> None:
    r = analyse({"ns": [5, 1, 3], "gc": [0, 0, 0], "careful": [0, 0, 1], "look": [0, 0, 0],
                 "minflt": [], "nvcsw": [], "nivcsw": []})
    assert set(r["tail_share"]) == {"gc", "careful", "look"}
    assert "-" in report({"none": r})[1]
