"""The ``postgres`` sink against the machine's PostgreSQL (``collector.testing.pg_dsn()``).

Each test creates its own table (a unique name) and drops it afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from pydantic import ValidationError

from collector.testing import (
    drop_tables,
    free_port,
    locked_tables,
    pg_dsn,
    unique_table,
)
from pump.sinks import Batch, PermanentError, Record, RetryableError, Verdict, build_sink


@pytest.fixture
def pg_table() -> Iterator[str]:
    name = unique_table("sink_test")
    try:
        yield name
    finally:
        drop_tables(name)


def _batch(lo: int, hi: int) -> Batch:
    return Batch([Record(f"ring:{i}", {"timestamp": 1700000000 + i, "username": f"u{i % 3}",
                                       "effect": "deny" if i % 2 else "allow", "seq": i,
                                       "policies": ["p1", "p2"], "blob": b"\x00\xffraw"})
                  for i in range(lo, hi)])


def _rows(table: str) -> list[tuple]:
    with psycopg.connect(pg_dsn()) as conn:
        return conn.execute(f"SELECT id, ts, username, effect, record FROM {table}").fetchall()


def test_copy_then_insert_deduplicates_redelivery(pg_table: str) -> None:
    sink = build_sink("postgres", {"dsn": pg_dsn(), "table": pg_table})
    sink.open()
    try:
        assert sink.write(_batch(0, 500), deadline=time.monotonic() + 10) is Verdict.OK
        assert sink.write(_batch(250, 750), deadline=time.monotonic() + 10) is Verdict.OK
        assert sink.write(_batch(0, 750), deadline=time.monotonic() + 10) is Verdict.OK
    finally:
        sink.close()
        sink.close()
    rows = _rows(pg_table)
    seqs = [r[4]["seq"] for r in rows]
    lost = set(range(750)) - set(seqs)
    dups = len(seqs) - len(set(seqs))
    assert (lost, dups) == (set(), 0), f"lost={sorted(lost)[:10]} duplicated={dups}"
    row = next(r for r in rows if r[0] == "ring:3")
    assert row[1] == datetime.fromtimestamp(1700000003, UTC)
    assert row[2:4] == ("u0", "deny")
    assert row[4]["policies"] == ["p1", "p2"]


def test_failure_mid_copy_stores_nothing_and_the_next_write_works(pg_table: str) -> None:
    """Rows go to the server a chunk at a time while the rest are encoded: a failure
    after the first chunk (here an id with a lone surrogate, which UTF-8 cannot hold;
    the pump's ids are ASCII) must leave none of the batch stored and the sink usable."""
    bad = _batch(0, 600)
    bad.records[550].id = "ring:\ud800"  # in the second chunk of 512
    sink = build_sink("postgres", {"dsn": pg_dsn(), "table": pg_table})
    sink.open()
    try:
        with pytest.raises(UnicodeEncodeError):
            sink.write(bad, deadline=time.monotonic() + 10)
        assert _rows(pg_table) == []
        assert sink.write(_batch(0, 600), deadline=time.monotonic() + 10) is Verdict.OK
    finally:
        sink.close()
    seqs = [r[4]["seq"] for r in _rows(pg_table)]
    assert sorted(seqs) == list(range(600))


def test_table_has_the_documented_columns(pg_table: str) -> None:
    sink = build_sink("postgres", {"dsn": pg_dsn(), "table": pg_table})
    sink.open()
    sink.close()
    with psycopg.connect(pg_dsn()) as conn:
        cols = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position", (pg_table,)).fetchall()
    assert cols == [("id", "text"), ("ts", "timestamp with time zone"), ("username", "text"),
                    ("effect", "text"), ("record", "jsonb"),
                    ("inserted_at", "timestamp with time zone")]


def test_timestamp_forms(pg_table: str) -> None:
    sink = build_sink("postgres", {"dsn": pg_dsn(), "table": pg_table})
    sink.open()
    try:
        sink.write(Batch([
            Record("a", {"timestamp": 1700000000123}),  # milliseconds
            Record("b", {"timestamp": "2024-05-01T12:00:00+02:00"}),
            Record("c", {"timestamp": "yesterday-ish"}),
            Record("d", {}),
        ]), deadline=time.monotonic() + 10)
    finally:
        sink.close()
    ts = {r[0]: r[1] for r in _rows(pg_table)}
    assert ts["a"] == datetime.fromtimestamp(1700000000.123, UTC)
    assert ts["b"] == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert ts["c"] is None and ts["d"] is None


def test_lock_wait_is_stopped_by_the_statement_timeout(pg_table: str) -> None:
    """A table locked by another session: the INSERT is cancelled server-side at the deadline."""
    sink = build_sink("postgres", {"dsn": pg_dsn(), "table": pg_table})
    sink.open()
    try:
        with locked_tables(pg_table):  # held until the block ends
            with pytest.raises(RetryableError, match="statement timeout"):
                sink.write(_batch(0, 10), deadline=time.monotonic() + 0.5)
        # the connection is usable again right away
        assert sink.write(_batch(0, 10), deadline=time.monotonic() + 10) is Verdict.OK
        sink.health_check(deadline=time.monotonic() + 5)
    finally:
        sink.close()
    assert len(_rows(pg_table)) == 10


def test_nul_characters_are_stored_as_replacement(pg_table: str) -> None:
    sink = build_sink("postgres", {"dsn": pg_dsn(), "table": pg_table})
    sink.open()
    try:
        sink.write(Batch([Record("x", {"text": "nul\x00byte", "username": "a\x00b",
                                       "literal": "\\u0000"})]),
                   deadline=time.monotonic() + 10)
    finally:
        sink.close()
    (row,) = _rows(pg_table)
    assert row[2] == "a\ufffdb"
    assert row[4]["text"] == "nul\ufffdbyte"
    assert row[4]["literal"] == "\\u0000"  # an escaped backslash is left alone


def test_incompatible_table_is_permanent(pg_table: str) -> None:
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {pg_table} (id integer PRIMARY KEY, ts timestamptz, "
                     "username text, effect text, record jsonb)")
    sink = build_sink("postgres", {"dsn": pg_dsn(), "table": pg_table})
    sink.open()
    try:
        with pytest.raises(PermanentError, match="integer"):
            sink.write(_batch(0, 2), deadline=time.monotonic() + 10)
        with pytest.raises(PermanentError):  # the connection stays usable
            sink.write(_batch(0, 2), deadline=time.monotonic() + 10)
    finally:
        sink.close()


def test_unreachable_server_is_retryable(pg_table: str) -> None:
    sink = build_sink("postgres", {"dsn": f"host=127.0.0.1 port={free_port()} dbname=x",
                                   "table": pg_table})
    with pytest.raises(RetryableError):
        sink.open()
    with pytest.raises(RetryableError):
        sink.write(_batch(0, 1), deadline=time.monotonic() + 2)
    sink.close()


def test_server_restart_drops_the_connection_then_recovers(pg_table: str) -> None:
    sink = build_sink("postgres", {"dsn": pg_dsn(), "table": pg_table})
    sink.open()
    try:
        pid = sink._conn.info.backend_pid
        with psycopg.connect(pg_dsn(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(RetryableError):
            sink.write(_batch(0, 5), deadline=time.monotonic() + 5)
        assert sink.write(_batch(0, 5), deadline=time.monotonic() + 5) is Verdict.OK
    finally:
        sink.close()
    assert len(_rows(pg_table)) == 5


def test_password_env_is_used_and_not_echoed(pg_table: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_POSTGRES_PASSWORD", "pw-not-shown")
    sink = build_sink("postgres", {"dsn": f"host=127.0.0.1 port={free_port()} dbname=x user=u",
                                   "table": pg_table})
    with pytest.raises(RetryableError) as info:
        sink.open()
    assert "pw-not-shown" not in str(info.value)


def test_concurrent_workers_create_the_table_once(pg_table: str) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        sink = build_sink("postgres", {"dsn": pg_dsn(), "table": pg_table})
        try:
            sink.open()
            sink.write(_batch(i * 100, i * 100 + 100), deadline=time.monotonic() + 10)
        except BaseException as exc:
            errors.append(exc)
        finally:
            sink.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(_rows(pg_table)) == 400


def test_bad_meta_names_the_key() -> None:
    with pytest.raises(ValidationError, match="table"):
        build_sink("postgres", {"table": "x; drop table y"})
    with pytest.raises(ValidationError, match="statement_timeout"):
        build_sink("postgres", {"statement_timeout": 3})
