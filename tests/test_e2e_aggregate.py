"""End to end into the aggregate sink across a ``kill -9`` of the pump.

The load of ``tests/_e2e_sinks.py`` into the machine's PostgreSQL; the pump is
killed with ``kill -9`` at a moment where entries are applied in PostgreSQL but
not yet acknowledged in Redis, the tables are locked for a while (an outage),
and the aggregates are compared with sums made from the source records.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from collector.common.stream import decode_entry
from collector.testing import RedisServer, drop_tables, locked_tables, pg_dsn, wait_until

from ._e2e_sinks import COUNT, POISON, PRODUCERS, make_record, settle, sink_stack, start
from .test_e2e import KEY, Stack
from .test_sinks_aggregate import expected_rows, stored_rows


@pytest.fixture
def stack(tmp_path: Path, redis_server: RedisServer) -> Iterator[Stack]:
    yield from sink_stack(tmp_path, redis_server)


def _ledger(table: str) -> set[str]:
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f"{table}_applied",)).fetchone()[0] is None:
            return set()
        return {r[0] for r in conn.execute(f"SELECT entry_id FROM {table}_applied")}


def test_aggregate_counts_each_record_once_across_kill_9(stack: Stack) -> None:
    """kill -9 of the pump while entries are applied in PostgreSQL but not acknowledged.

    With a backlog to drain, Redis is paused (SIGSTOP) and the whole pump
    killed while a worker has committed a write it could not acknowledge yet;
    Redis is killed too and restarted from its append-only file, so that the
    XACK left unread in its socket is never applied. Checked afterwards:
    entries both in the ledger and pending in Redis (retried until it
    happens). The pump is started again, so those entries are redelivered.
    Then the aggregate tables are locked for a while (the machine's
    PostgreSQL is shared and cannot be stopped), an outage the worker holds
    its batch through. The aggregates must equal
    sums made from the source records: nothing counted twice, nothing missing.
    """
    table = f"e2e_agg_{os.getpid()}"
    drop_tables(table, f"{table}_applied")
    sink = {"type": "aggregate", "workers": 2, "timeout_s": 2,
            "meta": {"dsn": pg_dsn(), "table": table, "bucket": "minute",
                     "dimensions": ["username", "effect"], "numeric_fields": ["latency_ms"]}}
    try:
        pump, load = start(stack, sink, pump_first=False, batch_deadline_s=4, trim=False)
        # a backlog first, so that the workers are busy writing when Redis pauses
        wait_until(lambda: stack.r.xlen(KEY) >= 150, 60, "a backlog of 150 entries",
                   interval=0.05)
        pending_applied: set[str] = set()
        for _attempt in range(10):
            pump.start()
            before = len(_ledger(table))
            wait_until(lambda b=before: len(_ledger(table)) > b, 60, "the pump to write",
                       interval=0.005)
            before = len(_ledger(table))
            stack.redis.pause()
            # A write committed during the pause cannot be acknowledged: its XACK
            # waits unread in Redis's socket. Killing Redis too (it keeps what it
            # had replied to in its append-only file) makes sure it is never read.
            try:
                wait_until(lambda b=before: len(_ledger(table)) > b, 1,
                           "a commit during the pause", interval=0.005)
            except AssertionError:
                pass
            pump.kill_all()
            stack.redis.kill()
            stack.redis.start()
            pending = {e["message_id"].decode() for e in
                       stack.r.xpending_range(KEY, "sink", "-", "+", 100_000)}
            pending_applied = pending & _ledger(table)
            if pending_applied:
                break
        assert pending_applied, "never caught a commit before its XACK"
        n_records = sum(len(decode_entry(f).records) for eid in pending_applied
                        for _, f in stack.r.xrange(KEY, eid, eid))
        print(f"aggregate kill-9: {len(pending_applied)} entries ({n_records} records) were "
              f"applied but not acknowledged at the kill; they are redelivered now")
        pump.start()

        with locked_tables(table, f"{table}_applied"):  # an outage of the aggregate tables
            wait_until(lambda: pump.readyz()[1]["sinks"]["sink"]["workers_in_outage"] >= 1, 60,
                       "a worker to see the outage", interval=0.1)
        settle(stack, load)
        assert pump.stop() == 0
        got = stored_rows(table)
    finally:
        drop_tables(table, f"{table}_applied")
    want = expected_rows(make_record(p, s) for p in range(PRODUCERS) for s in range(COUNT)
                         if (p, s) != POISON)
    total = sum(v[0] for v in want.values())
    twice = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    print(f"aggregate kill-9: {len(want)} rows, {total} records expected; stored "
          f"{sum(v[0] for v in got.values())} records in {len(got)} rows; "
          f"{len(twice)} rows differ")
    assert not twice, f"rows that differ (stored, expected): {list(twice.items())[:5]}"
    assert set(got) == set(want)
