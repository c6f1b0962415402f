"""The per-record pipeline (filters, omit, trim), the retry wrapper and the test sinks."""

from __future__ import annotations

import threading
import time

import msgpack
import pytest

from collector.common.stream import REPLAY_FOR, encode_entry
from pump._pipeline import RecordPipeline, compile_filter, trim_record
from pump._retry import RetryPolicy, WriteFailed, write_with_retries
from pump._worker import Stopper
from pump.config import Filters
from pump.sinks import Batch, PermanentError, Record, RetryableError, Verdict, build_sink
from pump.sinks.memory import MemorySink

from .pump_plugins import make_record

POLICY = RetryPolicy(attempt_timeout_s=1.0, initial_backoff_s=0.001, max_backoff_s=0.005)


def batch(n: int = 3) -> Batch:
    return Batch([Record(f"r:{i}", {"seq": i}) for i in range(n)])


def test_filter_include_exclude_and_usernames() -> None:
    keep = compile_filter(Filters(include={"effect": ["allow"]}, exclude={"seq": [2]},
                                  usernames=["a", "b"], skip_usernames=["b"]))
    assert keep is not None
    assert keep({"effect": "allow", "username": "a", "seq": 1})
    assert not keep({"effect": "deny", "username": "a", "seq": 1})
    assert not keep({"effect": "allow", "username": "b", "seq": 1})  # skipped
    assert not keep({"effect": "allow", "username": "c", "seq": 1})  # not listed
    assert not keep({"effect": "allow", "username": "a", "seq": 2})  # excluded
    assert not keep({"effect": ["unhashable"], "username": "a"})
    assert compile_filter(Filters()) is None


def test_trim_cuts_longest_strings_to_the_limit() -> None:
    data = {"a": "x" * 1000, "b": "y" * 500, "c": "short", "n": 5}
    raw = msgpack.packb(data)
    new, new_raw = trim_record(dict(data), raw, 400)
    assert len(new_raw) <= 400 and msgpack.unpackb(new_raw) == new
    assert new["c"] == "short" and new["n"] == 5
    assert len(new["a"]) < 1000


def test_prepare_counts_and_ids() -> None:
    recs = [make_record(i) for i in range(5)]
    entries = [(b"1-0", encode_entry("r" * 32, 10, recs))]
    pipe = RecordPipeline(Filters(exclude={"seq": [3]}), omit=True,
                          detail_fields=["policies"], max_record_size=None)
    out = pipe.prepare(entries)
    assert out.n_in == 5 and out.n_filtered == 1
    ids = [r.id for r in out.records()]
    assert ids == [f"{'r' * 32}:{s}" for s in (10, 11, 12, 14)]
    assert all(r.data["policies"] == "" and r.data["deciders"] == "d1" for r in out.records())
    assert out.entry_ids() == ["1-0"]


def test_a_replayed_entry_is_written_by_its_sink_only() -> None:
    """``collector dead-letters replay`` marks an entry for one sink's group: the
    others acknowledge it without writing it."""
    fields = {k.encode(): v for k, v in encode_entry("r" * 32, 7, [make_record(7)]).items()}
    entries = [(b"1-0", {**fields, REPLAY_FOR.encode(): b"t"})]
    for sink, written in (("t", ["r" * 32 + ":7"]), ("file", [])):
        pipe = RecordPipeline(Filters(), omit=False, detail_fields=[], max_record_size=None,
                              sink=sink)
        out = pipe.prepare(entries)
        assert [r.id for r in out.records()] == written
        assert out.ack_only == ([] if written else ["1-0"]) and not out.dead


def test_retry_wrapper_retries_then_succeeds() -> None:
    sink = MemorySink(MemorySink.Config.model_validate({"key": "w1", "fail_next_n": 2}))
    failures: list[int] = []
    attempts = write_with_retries(sink, batch(), POLICY, deadline=time.monotonic() + 5,
                                  stop=Stopper(), on_failure=lambda e, n: failures.append(n))
    assert attempts == 3 and failures == [1, 2] and len(sink.records) == 3


def test_retry_wrapper_permanent_raises_at_once() -> None:
    sink = MemorySink(MemorySink.Config.model_validate(
        {"key": "w2", "fail_next_n": 5, "fail_mode": "permanent"}))
    with pytest.raises(PermanentError):
        write_with_retries(sink, batch(), POLICY, deadline=time.monotonic() + 5, stop=Stopper())
    assert sink.writes == 1


def test_retry_wrapper_gives_up_at_the_deadline_and_passes_it_down() -> None:
    sink = MemorySink(MemorySink.Config.model_validate({"key": "w3", "delay_s": 10}))
    t0 = time.monotonic()
    with pytest.raises(WriteFailed) as err:
        write_with_retries(sink, batch(), RetryPolicy(0.05, 0.001, 0.005),
                           deadline=t0 + 0.3, stop=Stopper())
    assert isinstance(err.value.error, RetryableError)
    assert err.value.attempts >= 2 and sink.records == []


def test_retry_wrapper_retries_retryable_and_unclassified_errors() -> None:
    class Flaky(MemorySink):
        calls = 0

        def write(self, batch: Batch, *, deadline: float) -> Verdict:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise KeyError("bug")
            if Flaky.calls == 2:
                raise RetryableError("try again")
            return Verdict.OK

    sink = Flaky(MemorySink.Config.model_validate({"key": "w4"}))
    assert write_with_retries(sink, batch(), POLICY, deadline=time.monotonic() + 5,
                              stop=Stopper()) == 3


class _RecordingStop(threading.Event):
    """A stop event that records each requested pause and returns at once (no sleeping)."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(float(timeout or 0.0))
        return False


class _RetryAfterSink(MemorySink):
    """Answers like the http sink on a 429/503 with Retry-After, ``fails`` times."""

    fails = 0
    retry_after_s = 0.0

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        if self.fails > 0:
            self.fails -= 1
            err = RetryableError("http sink: server answered 503")
            err.retry_after_s = self.retry_after_s  # type: ignore[attr-defined]
            raise err
        return super().write(batch, deadline=deadline)


def test_retry_wrapper_honours_retry_after() -> None:
    sink = _RetryAfterSink(MemorySink.Config.model_validate({"key": "w5"}))
    sink.fails, sink.retry_after_s = 2, 1.5
    stop = _RecordingStop()
    attempts = write_with_retries(sink, batch(), POLICY, deadline=time.monotonic() + 60,
                                  stop=stop)
    # the policy alone would pause at most 5 ms; the server asked for 1.5 s
    assert attempts == 3 and stop.pauses == [1.5, 1.5] and len(sink.records) == 3


def test_retry_wrapper_retry_after_past_the_deadline_gives_up_without_waiting() -> None:
    sink = _RetryAfterSink(MemorySink.Config.model_validate({"key": "w6"}))
    sink.fails, sink.retry_after_s = 5, 120.0
    stop = _RecordingStop()
    with pytest.raises(WriteFailed) as err:
        write_with_retries(sink, batch(), POLICY, deadline=time.monotonic() + 30, stop=stop)
    assert err.value.attempts == 1 and stop.pauses == [] and sink.records == []
    assert err.value.error.retry_after_s == 120.0  # type: ignore[attr-defined]


def test_null_and_memory_sinks_contract() -> None:
    null = build_sink("null", {})
    null.open()
    assert null.write(batch(), deadline=time.monotonic() + 1) is Verdict.OK
    null.health_check(deadline=time.monotonic() + 1)
    null.close()
    null.close()
    mem = build_sink("memory", {"key": "contract", "dedupe": True})
    assert isinstance(mem, MemorySink)
    mem.open()
    mem.write(batch(), deadline=time.monotonic() + 1)
    mem.write(batch(), deadline=time.monotonic() + 1)  # redelivery
    assert len(mem.records) == 3
    mem.healthy = False
    with pytest.raises(RetryableError):
        mem.health_check(deadline=time.monotonic() + 1)
    mem.close()
    mem.close()
    with pytest.raises(RetryableError):
        mem.write(batch(), deadline=time.monotonic() + 1)
