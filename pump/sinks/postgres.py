"""``postgres`` sink: psycopg 3, binary ``COPY``, and a staging table for redeliveries.

Table
-----
Created if absent (``create_table: true``) as::

    CREATE TABLE <table> (
        id          text PRIMARY KEY,          -- the record's stable id
        ts          timestamptz,               -- from the record's ``timestamp_field``
        username    text,                      -- from ``username_field``
        effect      text,                      -- from ``effect_field``
        record      jsonb NOT NULL,            -- the record's own fields
        inserted_at timestamptz NOT NULL DEFAULT now()
    )

NUL characters, which PostgreSQL text and jsonb cannot hold, are stored as
U+FFFD. ``ts``: a number is Unix seconds (values above 1e11 are taken as
milliseconds), a string is parsed as ISO 8601; anything else gives NULL (the
value stays in ``record``).

Write path
----------
One transaction per batch. First the rows are ``COPY``-ed straight into the
table, the fastest path. If that fails on the primary key
(``UniqueViolation``: some ids are stored already, i.e. a redelivery), the
transaction is rolled back and the batch goes the deduplicating way:
``COPY`` into a session-private ``TEMP`` table (``ON COMMIT DELETE ROWS``),
then ``INSERT INTO <table> SELECT ... FROM staging ON CONFLICT (id) DO
NOTHING``. Redelivery therefore never duplicates (``deduplicates = True``),
and only a redelivered batch pays for the second path.

Rows go in binary ``COPY`` format (``pump/sinks/_pgcopy.py``), encoded
:data:`CHUNK` records at a time and written as each chunk is ready, so the
server stores one chunk while the pump encodes the next (the worker and
the server overlap instead of taking turns). Why the straight ``COPY``
first and not the staging table for every batch: on the 2-core test
machine the server spent 12 us of CPU per authz row on ``COPY`` into the
table (text format) and 17 on ``COPY`` into the staging table plus the
``INSERT ... ON CONFLICT``, whichever staging table (temporary or unlogged);
both keep a redelivered batch from duplicating (issue 18, pgsink report).

Deadline: ``statement_timeout`` is set (``SET LOCAL``) to the time left
before each ``COPY`` and before the insert, so the server cancels a
statement that would overrun (a lock wait, a slow disk) and the write stops.
A (re)connection uses ``connect_timeout`` = the time left, but libpq's
minimum is 2 s. ``tcp_user_timeout_ms`` bounds a write into a dead network.

Errors: connection problems, cancelled statements, serialisation failures
(``OperationalError``, ``InterfaceError``, ``InternalError``) are retryable;
bad data and bad SQL (``DataError``, ``ProgrammingError``, ``IntegrityError``,
``NotSupportedError``) are permanent. A record that cannot be encoded (JSON
refuses it) is left out and named in ``PermanentError.rejected``. A table
dropped while the pump runs is created again (``create_table: true``; the
write is retried) or, without ``create_table``, an ``OutageError``: the pump
holds the batch until the table is back.

Health check: the write's own ``COPY`` of one probe row into the table, in a
transaction that is rolled back: a missing table, a column whose type no
longer takes the rows, a lock or a full disk fail it, and nothing is stored.

Credentials: ``dsn`` is a libpq connection string or URI; the password comes
from ``password`` or the environment variable ``COLLECTOR_POSTGRES_PASSWORD``
and is never logged.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, SecretStr, field_validator

from collector.common.log import get_logger
from collector.common.redact import SecretUrl, remember

from ._base import (
    Batch,
    OutageError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfig,
    Verdict,
    register,
)
from ._pgcopy import SIGNATURE, TRAILER, binary_rows, copy_stream

log = get_logger(__name__)

PASSWORD_ENV = "COLLECTOR_POSTGRES_PASSWORD"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_STAGING = "collector_pump_staging"
_COLUMNS = "(id, ts, username, effect, record)"
_TYPES = "id text, ts timestamptz, username text, effect text, record jsonb"
PROBE_ID = "collector-health-probe"
_BINARY = "(FORMAT binary)"
#: Records encoded per COPY message: small enough that the server stores a chunk
#: while the next is encoded (module docstring), large enough to cost nothing per chunk.
CHUNK = 512


class PgConnectionConfig(SinkConfig):
    """How a sink reaches PostgreSQL (``postgres`` and ``aggregate``)."""

    dsn: SecretUrl = Field(default=SecretUrl("dbname=collector"),
                           description="libpq conninfo string or URI (may hold a password)")
    password: SecretStr | None = Field(default=None, description=f"or env {PASSWORD_ENV}")
    table: str = Field(default="analytics", description="table name, optionally schema.table")
    create_table: bool = True
    connect_timeout_s: float = Field(default=10.0, gt=0)
    tcp_user_timeout_ms: int = Field(default=30_000, ge=0)
    application_name: str = "collector-pump"

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        parts = value.split(".")
        if len(parts) > 2 or not all(_IDENT.match(p) for p in parts):
            raise ValueError(
                f"table {value!r} must be name or schema.name, each a letter or _ followed by "
                "letters, digits or _ (at most 63)")
        return value


class PostgresConfig(PgConnectionConfig):
    """``meta`` of a ``postgres`` sink."""

    timestamp_field: str = "timestamp"
    username_field: str = "username"
    effect_field: str = "effect"


def open_connection(cfg: PgConnectionConfig, deadline: float) -> Any:
    """A new psycopg connection (autocommit off) within ``deadline``; errors classified."""
    import psycopg

    left = Sink.time_left(deadline)
    password = cfg.password.get_secret_value() if cfg.password else None
    password = password or os.environ.get(PASSWORD_ENV) or None
    remember(password)
    kwargs: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(min(left, cfg.connect_timeout_s))),
        "application_name": cfg.application_name,
        "autocommit": False,
    }
    if cfg.tcp_user_timeout_ms:
        kwargs["tcp_user_timeout"] = cfg.tcp_user_timeout_ms
    if password is not None:
        kwargs["password"] = password
    try:
        return psycopg.connect(cfg.dsn.get_secret_value(), **kwargs)
    except psycopg.Error as exc:
        raise _classify(exc, "connect") from exc


def rollback_after(conn: Any, exc: Exception, drop: Callable[[], None]) -> None:
    """After a failed statement: roll back, or ``drop`` a broken connection; a
    ``RetryableError`` (a deadline) is raised again as it is."""
    import psycopg

    try:
        if not conn.closed:
            conn.rollback()
    except psycopg.Error:
        drop()
    if isinstance(exc, RetryableError):
        raise exc
    if conn.broken or conn.closed:
        drop()


def close_quietly(conn: Any) -> None:
    """Close a connection that may be broken already."""
    if conn is not None:
        try:
            conn.close()
        except Exception as exc:  # closing a broken connection must not raise
            log.debug("Closing the connection failed.", error=exc)


@register
class PostgresSink(Sink):
    name = "postgres"
    Config = PostgresConfig
    deduplicates = True
    requires = ("psycopg",)
    extra = "postgres"

    def __init__(self, config: PostgresConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._conn: Any = None
        self._table_ready = False

    # connection
    def open(self) -> None:
        self._connection(time.monotonic() + self.cfg.connect_timeout_s)

    def _connection(self, deadline: float) -> Any:
        import psycopg

        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            self._ensure_table(conn)
            return conn
        self._drop()
        conn = open_connection(self.cfg, deadline)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (id text, ts timestamptz, "
                    "username text, effect text, record jsonb) ON COMMIT DELETE ROWS")
            conn.commit()
        except psycopg.Error as exc:
            close_quietly(conn)
            raise _classify(exc, "connect") from exc
        self._conn = conn
        self._ensure_table(conn)
        return conn

    def _ensure_table(self, conn: Any) -> None:
        """Create the table unless it is known to be there (again after it was dropped)."""
        import psycopg

        if not self.cfg.create_table or self._table_ready:
            return
        try:
            with conn.cursor() as cur:
                self._create_table(cur)
            conn.commit()
        except psycopg.Error as exc:
            self._drop()
            raise _classify(exc, "create table") from exc

    def _create_table(self, cur: Any) -> None:
        table = self.cfg.table
        # An advisory lock serialises CREATE TABLE IF NOT EXISTS between workers
        # (concurrent ones can fail on the catalog's unique index).
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id text PRIMARY KEY, ts timestamptz, "
            "username text, effect text, record jsonb NOT NULL, "
            "inserted_at timestamptz NOT NULL DEFAULT now())")
        self._table_ready = True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)

    def close(self, timeout_s: float = 5.0) -> None:
        self._drop()

    # writing
    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        self.time_left(deadline)
        if not batch:
            return Verdict.OK
        # the batch's columns: no Record object per record
        rejected = self._copy(batch.ids(), batch.datas(), deadline)
        if rejected:
            raise PermanentError.for_records("postgres", rejected, "stored")
        return Verdict.OK

    def _copy(self, ids: list[str], datas: list[Any], deadline: float) -> dict[str, str]:
        """COPY the records (``ids``, their fields ``datas``) into the table in one
        transaction, deduplicating a redelivery; the ids of those JSON cannot encode
        (left out)."""
        import psycopg

        cfg = self.cfg
        conn = self._connection(deadline)
        parts: list[bytes] = []
        rejected: dict[str, str] = {}
        try:
            try:
                with conn.cursor() as cur:
                    cur.execute(_set_timeout(deadline))
                    with cur.copy(f"COPY {cfg.table} {_COLUMNS} FROM STDIN {_BINARY}") as copy:
                        copy.write(SIGNATURE)
                        # a chunk at a time: the server stores one while the next is encoded
                        for start in range(0, len(ids), CHUNK):
                            end = start + CHUNK
                            rows, bad = binary_rows(ids[start:end], datas[start:end],
                                                    cfg.timestamp_field, cfg.username_field,
                                                    cfg.effect_field)
                            rejected.update(bad)
                            parts.append(rows)
                            copy.write(rows)
                        copy.write(TRAILER)
                conn.commit()
                return rejected
            except psycopg.errors.UniqueViolation:
                conn.rollback()  # some ids are stored already: a redelivery
            with conn.cursor() as cur:
                cur.execute(_set_timeout(deadline))
                with cur.copy(f"COPY {_STAGING} {_COLUMNS} FROM STDIN {_BINARY}") as copy:
                    copy.write(SIGNATURE + b"".join(parts) + TRAILER)
                cur.execute(
                    _set_timeout(deadline)
                    + f"; INSERT INTO {cfg.table} {_COLUMNS} SELECT {_COLUMNS[1:-1]} "
                    f"FROM {_STAGING} ON CONFLICT (id) DO NOTHING")
            conn.commit()
            return rejected
        except (psycopg.Error, RetryableError) as exc:
            rollback_after(conn, exc, self._drop)
            raise self._table_error(exc, "write") from exc
        except BaseException:
            self._drop()  # failed mid-COPY (a bug, an interrupt): the session is unknown
            raise

    def _table_error(self, exc: Exception, what: str) -> Exception:
        """A missing table is created again on the next attempt, or an outage."""
        import psycopg

        if isinstance(exc, psycopg.errors.UndefinedTable):
            self._table_ready = False
            detail = f"postgres sink {what}: table {self.cfg.table} does not exist"
            if self.cfg.create_table:
                return RetryableError(f"{detail}; creating it again")
            return OutageError(f"{detail} (create_table is off)")
        if isinstance(exc, psycopg.errors.InvalidBinaryRepresentation):
            # binary COPY names the column only: say what the table has and what it needs
            return PermanentError(
                f"postgres sink {what} failed: {type(exc).__name__}: {exc}; table "
                f"{self.cfg.table} has {self._column_types()}, the sink writes {_TYPES}")
        return _classify(exc, what)

    def _column_types(self) -> str:
        """The table's columns and types (for an error message), or ``unknown columns``."""
        import psycopg

        conn = self._conn
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
                            "ORDER BY attnum", (self.cfg.table,))
                columns = ", ".join(f"{name} {kind}" for name, kind in cur.fetchall())
            conn.rollback()
            return columns
        except (psycopg.Error, AttributeError) as exc:  # no connection, or it broke
            log.debug("Reading the table's columns failed.", error=exc)
            return "unknown columns"

    def health_check(self, *, deadline: float) -> None:
        """The write's COPY of a probe row, rolled back (module docstring)."""
        import psycopg

        cfg = self.cfg
        probe = {cfg.timestamp_field: datetime.now(UTC), cfg.username_field: "probe",
                 cfg.effect_field: "probe"}
        row, _ = copy_stream([PROBE_ID], [probe], cfg.timestamp_field, cfg.username_field,
                             cfg.effect_field)
        conn = self._connection(deadline)
        try:
            with conn.cursor() as cur:
                cur.execute(_set_timeout(deadline))
                with cur.copy(f"COPY {cfg.table} {_COLUMNS} FROM STDIN {_BINARY}") as copy:
                    copy.write(row)
            conn.rollback()
        except (psycopg.Error, RetryableError) as exc:
            rollback_after(conn, exc, self._drop)
            raise self._table_error(exc, "health check") from exc


def _set_timeout(deadline: float) -> str:
    left = deadline - time.monotonic()
    if left < 0.001:
        raise RetryableError("deadline passed before the write could finish")
    return f"SET LOCAL statement_timeout = {max(1, int(left * 1000))}"


def _classify(exc: Exception, what: str) -> Exception:
    import psycopg

    detail = f"postgres sink {what} failed: {type(exc).__name__}: {exc}".strip()
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return RetryableError(f"{detail} (statement timeout from the deadline)")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | psycopg.InternalError):
        return RetryableError(detail)
    return PermanentError(detail)
