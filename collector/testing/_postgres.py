"""The machine's PostgreSQL for sink tests: private tables, dropped after, and outages.

A shared PostgreSQL is never stopped or reconfigured by a test: each test
uses tables of its own (:func:`unique_table`), drops them afterwards
(:func:`drop_tables`), and makes a sink's PostgreSQL "unavailable" by
holding an exclusive lock on its tables (:func:`locked_tables`). psycopg
is imported only when one of these runs.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["drop_tables", "locked_tables", "pg_dsn", "pg_seen", "unique_table"]


def pg_dsn() -> str:
    """The PostgreSQL to test against: ``$COLLECTOR_TEST_PG_DSN`` or the local socket's
    ``collector_test`` database (which ``.ci/setup`` creates)."""
    return os.environ.get("COLLECTOR_TEST_PG_DSN", "dbname=collector_test")


def unique_table(prefix: str) -> str:
    """A table name no other test (or engineer) on this server uses: ``PREFIX_<12 hex>``."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def drop_tables(*tables: str, dsn: str | None = None) -> None:
    """``DROP TABLE IF EXISTS`` each of ``tables``."""
    import psycopg

    with psycopg.connect(dsn or pg_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {', '.join(tables)}")


@contextmanager
def locked_tables(*tables: str, dsn: str | None = None,
                  lock_timeout_s: float | None = None) -> Iterator[None]:
    """Hold ``ACCESS EXCLUSIVE`` locks on ``tables`` until the block ends.

    Every statement on them waits meanwhile, which is a PostgreSQL outage as
    a sink sees it; the locks go with a rollback at the end. With
    ``lock_timeout_s`` taking the locks fails (``psycopg.Error``) instead of
    waiting longer than that for a session that holds them.
    """
    import psycopg

    with psycopg.connect(dsn or pg_dsn(), connect_timeout=10) as conn:
        if lock_timeout_s is not None:
            conn.execute(f"SET lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
        conn.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def pg_seen(table: str, dsn: str | None = None) -> Counter[tuple[int, int]]:
    """How often each (producer, seq) of :func:`authz_record` is stored in the postgres
    sink's ``table`` (empty while the table does not exist); each stored record is
    checked equal to the one generated."""
    import psycopg

    from ._records import authz_record, record_key

    seen: Counter[tuple[int, int]] = Counter()
    with psycopg.connect(dsn or pg_dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if row is None or row[0] is None:
            return seen
        for rec_id, rec in conn.execute(f"SELECT id, record FROM {table}"):
            key = record_key(rec)
            assert rec == authz_record(*key), f"postgres record {rec_id} is {rec}"
            seen[key] += 1
    return seen
