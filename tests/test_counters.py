"""collector.common.counters: a layout declared by name, slots shared with a spawned process."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from collector.common.counters import Layout, Slot

LAYOUT = Layout(counters={"records": "Records seen.", "errors": "Errors seen."},
                gauges=("heartbeat",),
                histograms={"seconds": ("Time per call.", (0.1, 1.0))})


def _child(slot: Slot) -> None:
    slot.add("records", 5)
    slot.add("errors")
    slot.set("heartbeat", 42.0)
    for v in (0.05, 0.1, 0.5, 3.0):
        slot.observe("seconds", v)


def test_a_spawned_process_writes_by_name_and_the_parent_reads() -> None:
    ctx = mp.get_context("spawn")
    slots = [LAYOUT.new_slot(ctx), LAYOUT.new_slot(ctx)]
    for slot in slots:
        proc = ctx.Process(target=_child, args=(slot,))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
    assert [s.get("records") for s in slots] == [5, 5]
    assert LAYOUT.total(slots, "errors") == 2 and slots[1].get("heartbeat") == 42.0

    class C(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return LAYOUT.families("t_", {("a",): slots[:1], ("b",): slots}, labels=["sink"])

    registry = CollectorRegistry(auto_describe=False)
    registry.register(C())
    text = generate_latest(registry).decode()
    for line in ('t_records_total{sink="a"} 5.0', 't_records_total{sink="b"} 10.0',
                 't_seconds_bucket{le="0.1",sink="a"} 2.0',  # 0.05 and 0.1 (le is <=)
                 't_seconds_bucket{le="1.0",sink="a"} 3.0',
                 't_seconds_bucket{le="+Inf",sink="b"} 8.0', 't_seconds_sum{sink="a"} 3.65'):
        assert line in text, text
    assert "heartbeat" not in text  # gauges are the supervisor's, not exported


def test_layout_rules() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        Layout(counters={"x": ""}, gauges=("x",))
    with pytest.raises(ValueError, match="must increase"):
        Layout(histograms={"h": ("", (1.0, 0.5))})
    local = LAYOUT.local_slot()
    local.add("records")
    with pytest.raises(KeyError):
        local.add("recrods")
