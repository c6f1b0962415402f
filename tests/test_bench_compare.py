"""``bench compare``'s arithmetic: medians with min/max and the target verdicts.

The measurements themselves run in ``python -m bench compare`` (minutes of
load, not for the test suite); this checks what it concludes from them.
"""

from __future__ import annotations

import pytest

from bench.compare import summarize, targets


def _raw(none_rps: list[float], ours_rps: list[float]) -> dict:
    return {
        "gunicorn_saturated": {
            "none": [{"rps": r, "machine_cpu_us_per_request": 300.0} for r in none_rps],
            "ours": [{"rps": r, "machine_cpu_us_per_request": 306.0} for r in ours_rps],
        },
        "loop": {
            "ours": [{"cpu_ns_per_record": 1000.0}],
            "otel_deque": [{"cpu_ns_per_record": 1900.0}],
            "seed_queue": [{"cpu_ns_per_record": 8000.0}],
            "sync_rpush": [{"cpu_ns_per_record": 60000.0}],
        },
        "end_to_end_1": {"ours": [{"records_per_s": 250_000.0}]},
        "end_to_end_4": {"ours": [{"records_per_s": 650_000.0}]},
    }


def test_summary_is_median_min_max_per_key() -> None:
    s = summarize(_raw([5000, 6000, 5500], [5400, 5300, 5600]))
    rps = s["gunicorn_saturated"]["none"]["rps"]
    assert (rps["median"], rps["min"], rps["max"], rps["n"]) == (5500, 5000, 6000, 3)


def test_target_verdicts_use_medians() -> None:
    lines = targets(summarize(_raw([5000, 6000, 5500], [5400, 5300, 5600])))
    by_start = {line.split(":")[0]: line for line in lines}
    sat = by_start["ours keeps 98.2% of design 1's saturated requests/s (>= 97%)"]
    assert sat.endswith("machine CPU per request 306 us vs 300 us (+2.0%)")
    assert ": met;" in sat
    otel = next(line for line in lines if "OTel" in line)
    assert "= 1.9x (>= 2x): NOT met" in otel
    assert any("seed queue" in line and "8.0x (>= 2x): met" in line for line in lines)
    assert any("sync RPUSH" in line and "60.0x (>= 30x): met" in line for line in lines)
    # the best producer count counts
    assert lines[-1] == "ours end to end into Redis: 650,000 records/s (>= 300,000): met"


def test_a_slower_ours_is_not_met() -> None:
    lines = targets(summarize(_raw([6000], [5700])))
    assert lines[0].startswith("ours keeps 95.0% of design 1's saturated requests/s "
                               "(>= 97%): NOT met")


def test_rounds_rotate_and_paired_ratios_take_the_median() -> None:
    from bench._compare_rounds import paired, round_order, verdicts

    names = ["none", "ours", "sync_rpush", "otel_deque"]
    assert [round_order(names, r) for r in range(4)] == [
        ["none", "ours", "otel_deque"], ["ours", "otel_deque", "none"],
        ["otel_deque", "none", "ours"], ["none", "ours", "otel_deque"]]
    # round 2 was slow for everybody: its ratios are still fair pairs
    none = [5000, 5000, 2500, 5000, 5000]
    ours = [4900, 5050, 2480, 4975, 4950]
    otel = [4800, 5100, 2400, 4900, 4900]
    cpu = {"none": 400.0, "ours": 404.0, "otel_deque": 410.0}  # us per request
    rounds = {n: [{"round": i, "rps": v, "server_cpu_us_per_request": cpu[n]}
                  for i, v in enumerate(vals)]
              for n, vals in (("none", none), ("ours", ours), ("otel_deque", otel))}
    p = paired(rounds)
    assert p["rounds"] == 5
    assert p["ours/none"]["median"] == pytest.approx(0.992) and p["ours/none"]["n"] == 5
    assert p["ours/otel_deque"]["min"] == 5050 / 5100
    # capacity at equal CPU: none's CPU per request over ours'
    assert p["ours/none cpu"]["median"] == pytest.approx(400 / 404)
    lines = verdicts(p)
    assert lines[0].startswith("ours keeps 99.2% of no analytics' saturated requests/s, "
                               "median of 5 paired rounds")
    assert ": met; " in lines[0]
    # 5 rounds: the interval of the median is their min and max, 99.2% [98.0%-101.0%]
    assert lines[0].endswith("contains 99.0%: NOT decided by this run")
    assert lines[1].startswith("ours keeps 99.0% of no analytics' saturated requests/s at "
                               "equal CPU") and ": met; " in lines[1]
    assert ": met; " in lines[2]  # ahead of the OTel-style design in the median round
    assert "requests/s at equal CPU = 1.015" in lines[3] and lines[3].endswith(": decided")


def test_the_interval_of_the_median_is_distribution_free() -> None:
    from bench._compare_rounds import median_interval

    assert median_interval([float(i) for i in range(1, 11)]) == (2.0, 9.0)  # 97.9%
    assert median_interval([float(i) for i in range(1, 21)]) == (6.0, 15.0)  # 95.9%
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)
