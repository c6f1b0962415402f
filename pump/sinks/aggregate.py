"""``aggregate`` sink: per-bucket roll-ups in PostgreSQL that count each record once.

Rows
----
One row per time bucket (``bucket``: minute, hour or day, UTC) and value of
every configured dimension (``dimensions``, e.g. ``username`` and
``effect``; a missing dimension is ``''``)::

    CREATE TABLE <table> (
        bucket      timestamptz NOT NULL,
        "<dim>"     text NOT NULL,                 -- one column per dimension
        count       bigint NOT NULL,               -- records
        "<f>_count" bigint NOT NULL,               -- per numeric field: records carrying it,
        "<f>_sum"   double precision NOT NULL,     --   their sum, min and max,
        "<f>_min"   double precision,
        "<f>_max"   double precision,
        "<f>_sketch" jsonb NOT NULL,               --   and a quantile sketch (below)
        updated_at  timestamptz NOT NULL,
        PRIMARY KEY (bucket, "<dim>", ...))

A record's time is its ``time_field`` (Unix seconds, milliseconds or ISO
8601, as the postgres sink reads it); a record without one is placed at the
time Redis added its stream entry, which redelivery keeps. A record whose
time field or numeric fields hold something else (a word, NaN, a list) is
rejected alone (``PermanentError.rejected``); the rest are counted.

Sketch: a DDSketch-style log histogram: value ``v > 0`` counts in bin
``ceil(log_g v)`` with ``g = (1 + a) / (1 - a)`` (``a`` =
``sketch_relative_accuracy``), stored as ``{"p<bin>": n, "n<bin>": n (v < 0),
"z": n (v = 0)}``. Any quantile read from it is within ``a`` (relative) of
the exact one: ``SELECT collector_sketch_quantile("<f>_sketch", 0.99, a)``.
Sketches of several rows add up: ``collector_sketch_merge(a, b)``. Both SQL
functions are created with the table.

Exactly once
------------
A record must add once, however often it reaches the sink: the pump
redelivers an entry after a worker was killed between its commit and its
XACK, and the daemon sends a batch again when Redis applied an XADD whose
reply was lost (then the same records arrive in another entry). So the
ledger is kept per record, not per entry: ``<table>_applied`` holds runs of
record ids already counted, ``(ring, lo, hi)`` for the ids ``ring:lo`` to
``ring:hi`` (an id that is not ``<ring>:<number>`` is a run of its own,
``(id, 0, 0)``), plus the stream entry each run came from. Every write is
one transaction that takes an advisory lock per ring of the batch (in one
order, so that workers holding the same records serialise and never
deadlock), reads the runs that overlap the batch's, leaves out the records
they cover, upserts the rest and inserts their runs. Rejected records are
not in any run: a fixed and replayed dead letter counts. Ledger rows older
than ``applied_retention_s`` are deleted; it must exceed the longest time a
record can take to come again (the pump's longest outage). tyk-pump's
sql-aggregate, for comparison, adds ``counter + excluded`` per org and per
chunk of rows in separate statements with nothing recording what was
applied: a batch written twice, or retried after a chunk failed, is
counted twice.

Deadline: ``statement_timeout`` = the time left, before each statement.
Errors are classified as in the postgres sink (connection and cancelled
statements, deadlocks retryable; bad SQL, a table of another shape permanent).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from collector.common.log import get_logger

from ._base import Batch, PermanentError, Record, RetryableError, Sink, Verdict, register
from ._rollup import FUNCTIONS, Row, digest, dim_text, fold, number, upsert_sql
from ._time import entry_seconds, epoch_seconds
from .postgres import (
    PgConnectionConfig,
    _classify,
    _set_timeout,
    close_quietly,
    open_connection,
    rollback_after,
)

log = get_logger(__name__)

# A good record: (ring, seq, (bucket, *dimensions), numeric values)
_Good = list[tuple[str, int, tuple[Any, ...], list[float | None]]]

_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,48}$")
_RESERVED = {"bucket", "count", "updated_at"}
_BUCKET_S = {"minute": 60, "hour": 3600, "day": 86400}

class AggregateConfig(PgConnectionConfig):
    """``meta`` of an ``aggregate`` sink (connection keys as for ``postgres``)."""

    table: str = Field(default="analytics_aggregates", description="optionally schema.table")
    bucket: Literal["minute", "hour", "day"] = "hour"
    dimensions: list[str] = Field(default_factory=lambda: ["username", "effect"])
    numeric_fields: list[str] = Field(default_factory=list)
    time_field: str = "timestamp"
    sketch_relative_accuracy: float = Field(default=0.01, gt=0, lt=0.5)
    applied_retention_s: float = Field(default=7 * 86400.0, gt=0)
    prune_interval_s: float = Field(default=60.0, gt=0)

    @field_validator("dimensions", "numeric_fields")
    @classmethod
    def _columns(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _COLUMN.match(name) or name.lower() in _RESERVED:
                raise ValueError(
                    f"{name!r} cannot be a column: a letter or _ followed by letters, digits or "
                    f"_ (at most 49), and not one of {sorted(_RESERVED)}")
        if len({n.lower() for n in names}) != len(names):
            raise ValueError(f"{names} names a column twice")
        return names

    @model_validator(mode="after")
    def _distinct(self) -> AggregateConfig:
        both = {d.lower() for d in self.dimensions} & {f.lower() for f in self.numeric_fields}
        if both:
            raise ValueError(f"{sorted(both)} cannot be both a dimension and a numeric field")
        return self


@register
class AggregateSink(Sink):
    name = "aggregate"
    Config = AggregateConfig
    deduplicates = True
    requires = ("psycopg",)
    extra = "postgres"

    def __init__(self, config: AggregateConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._conn: Any = None
        self._ready = False
        self._next_prune = 0.0
        self._bucket_s = _BUCKET_S[config.bucket]
        a = config.sketch_relative_accuracy
        self._inv_log_gamma = 1.0 / math.log((1 + a) / (1 - a))
        self._ledger = f"{config.table}_applied"
        self._dims = [f'"{d}"' for d in config.dimensions]
        self._upsert = upsert_sql(config.table, self._dims, config.numeric_fields)

    # -- connection -----------------------------------------------------------
    def open(self) -> None:
        self._connection(time.monotonic() + self.cfg.connect_timeout_s)

    def _connection(self, deadline: float) -> Any:
        import psycopg

        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop()
        conn = open_connection(self.cfg, deadline)
        try:
            if self.cfg.create_table and not self._ready:
                with conn.cursor() as cur:
                    cur.execute(_set_timeout(deadline))
                    self._create(cur)
                conn.commit()
                self._ready = True
        except (psycopg.Error, RetryableError) as exc:
            close_quietly(conn)
            if isinstance(exc, RetryableError):
                raise
            raise _classify(exc, "create tables") from exc
        self._conn = conn
        return conn

    def _create(self, cur: Any) -> None:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL AND "
                    "to_regprocedure('collector_sketch_merge(jsonb,jsonb)') IS NOT NULL",
                    (self.cfg.table, self._ledger))
        if cur.fetchone()[0]:
            return  # all there: no DDL, which would wait for locks others hold on the tables
        # One worker at a time: concurrent CREATE ... IF NOT EXISTS / OR REPLACE can collide.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('collector_aggregate_ddl'))")
        cur.execute(FUNCTIONS)
        cols = [f"{d} text NOT NULL" for d in self._dims]
        for f in self.cfg.numeric_fields:
            cols += [f'"{f}_count" bigint NOT NULL DEFAULT 0',
                     f'"{f}_sum" double precision NOT NULL DEFAULT 0',
                     f'"{f}_min" double precision', f'"{f}_max" double precision',
                     f"\"{f}_sketch\" jsonb NOT NULL DEFAULT '{{}}'"]
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self.cfg.table} (bucket timestamptz NOT NULL, "
            + "".join(c + ", " for c in cols)
            + "count bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), "
            f"PRIMARY KEY ({', '.join(['bucket', *self._dims])}))")
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self._ledger} (ring text NOT NULL, "
            "lo bigint NOT NULL, hi bigint NOT NULL, stream text NOT NULL, "
            "entry_id text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (ring, lo))")
        index = self._ledger.replace(".", "_")[:48]
        cur.execute(f"CREATE INDEX IF NOT EXISTS {index}_hi ON {self._ledger} (ring, hi)")
        cur.execute(f"CREATE INDEX IF NOT EXISTS {index}_at ON {self._ledger} (applied_at)")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)

    def close(self, timeout_s: float = 5.0) -> None:
        self._drop()

    def health_check(self, *, deadline: float) -> None:
        import psycopg

        conn = self._connection(deadline)
        try:
            with conn.cursor() as cur:
                cur.execute(_set_timeout(deadline))
                cur.execute(f"SELECT 1 FROM {self.cfg.table}, {self._ledger} LIMIT 0")
            conn.rollback()
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._drop()
            raise _classify(exc, "health check") from exc

    # -- writing ----------------------------------------------------------------
    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        import psycopg

        self.time_left(deadline)
        if not len(batch):
            return Verdict.OK
        entries = batch.entries() or [(digest(batch.records), batch.records)]
        rejected: dict[str, str] = {}
        # Placed before anything is written, for every record (applied or not), so
        # that the same records are rejected however often they come.
        placed = [(eid, self._place(eid, recs, rejected)) for eid, recs in entries]
        spans = _spans(p for _, good in placed for p in good)
        conn = self._connection(deadline)
        try:
            with conn.cursor() as cur:
                if spans:
                    cur.execute(_set_timeout(deadline))
                    cur.execute(
                        "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT "
                        "hashtextextended(r, 7041) AS k FROM unnest(%s::text[]) AS r "
                        "ORDER BY 1) AS rings", (sorted(spans),))
                    cur.execute(
                        f"SELECT l.ring, l.lo, l.hi FROM {self._ledger} AS l JOIN "
                        "unnest(%s::text[], %s::int8[], %s::int8[]) AS b(ring, lo, hi) "
                        "ON l.ring = b.ring AND l.hi >= b.lo AND l.lo <= b.hi",
                        [list(spans), *map(list, zip(*spans.values(), strict=True))])
                    fresh = _fresh(placed, _Covered(cur.fetchall()))
                    runs = [(*run, eid) for eid, good in fresh for run in _runs(good)]
                    rows = fold(([(p[2], p[3]) for p in good] for _, good in fresh),
                                len(self.cfg.numeric_fields), self._inv_log_gamma)
                    if runs:
                        cur.execute(
                            f"INSERT INTO {self._ledger} (ring, lo, hi, entry_id, stream) "
                            "SELECT r, l, h, e, %s FROM unnest(%s::text[], %s::int8[], "
                            "%s::int8[], %s::text[]) AS u(r, l, h, e)",
                            [batch.stream, *map(list, zip(*runs, strict=True))])
                    if rows:
                        cur.execute(_set_timeout(deadline))
                        cur.execute(self._upsert, self._columns(rows))
            conn.commit()
        except (psycopg.Error, RetryableError) as exc:
            rollback_after(conn, exc, self._drop)
            raise _classify(exc, "write") from exc
        self._maybe_prune(deadline)
        if rejected:
            first = next(iter(rejected.items()))
            raise PermanentError(
                f"aggregate sink: {len(rejected)} record(s) rejected, the others counted; "
                f"first {first[0]}: {first[1]}", rejected=rejected)
        return Verdict.OK

    def _place(self, entry_id: str, records: Sequence[Record],
               rejected: dict[str, str]) -> _Good:
        """Each good record of an entry as (ring, seq, (bucket, *dimensions), numeric
        values), ``ring:seq`` being its id."""
        cfg = self.cfg
        fallback = entry_seconds(entry_id)
        if fallback is None:
            fallback = time.time()
        size = self._bucket_s
        out = []
        for r in records:
            data = r.data
            raw_t = data.get(cfg.time_field)
            t = fallback if raw_t is None else epoch_seconds(raw_t)
            if t is None:
                rejected[r.id] = f"{cfg.time_field} {raw_t!r:.80} is not a time"
                continue
            values: list[float | None] = []
            for f in cfg.numeric_fields:
                v = data.get(f)
                if v is not None:
                    v = number(v)
                    if v is None:
                        rejected[r.id] = f"{f} {data.get(f)!r:.80} is not a finite number"
                        break
                values.append(v)
            else:
                key = (int(t // size) * size, *(dim_text(data.get(d)) for d in cfg.dimensions))
                ring, sep, seq = r.id.rpartition(":")
                if sep and seq.isdigit():
                    out.append((ring, int(seq), key, values))
                else:
                    out.append((r.id, 0, key, values))
        return out

    def _columns(self, rows: dict[tuple[Any, ...], Row]) -> list[list[Any]]:
        """The upsert's arrays, rows sorted by key (one lock order for every worker)."""
        from psycopg.types.json import Jsonb

        keys = sorted(rows)
        cols: list[list[Any]] = [[k[i] for k in keys] for i in range(1 + len(self._dims))]
        cols.append([rows[k].count for k in keys])
        for i in range(len(self.cfg.numeric_fields)):
            stats = [rows[k].stats[i] for k in keys]
            cols += [[s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats],
                     [s[3] for s in stats], [Jsonb(s[4]) for s in stats]]
        return cols

    def _maybe_prune(self, deadline: float) -> None:
        """Forget ledger rows past the retention, at most once per prune_interval_s."""
        import psycopg

        now = time.monotonic()
        if now < self._next_prune or deadline - now < 0.05:
            return
        self._next_prune = now + self.cfg.prune_interval_s
        conn = self._conn
        try:
            with conn.cursor() as cur:
                cur.execute(_set_timeout(deadline))
                cur.execute(f"DELETE FROM {self._ledger} WHERE applied_at < now() - "
                            "make_interval(secs => %s)", (self.cfg.applied_retention_s,))
            conn.commit()
        except (psycopg.Error, RetryableError) as exc:
            log.warning("Could not prune the ledger of applied entries.", error=exc)
            try:
                conn.rollback()
            except psycopg.Error:
                self._drop()


class _Covered:
    """The runs of record ids already counted, per ring."""

    def __init__(self, runs: Iterable[tuple[str, int, int]]) -> None:
        self.runs: dict[str, list[tuple[int, int]]] = {}
        for ring, lo, hi in runs:
            self.runs.setdefault(ring, []).append((lo, hi))

    def has(self, ring: str, seq: int) -> bool:
        return any(lo <= seq <= hi for lo, hi in self.runs.get(ring, ()))


def _fresh(placed: list[tuple[str, _Good]], done: _Covered) -> list[tuple[str, _Good]]:
    """Per entry, its records not yet counted: in no run of ``done`` and not in an
    earlier entry of the batch (the daemon's resent batch can follow the first)."""
    seen: set[tuple[str, int]] = set()
    out = []
    for eid, good in placed:
        keep = []
        for p in good:
            k = (p[0], p[1])
            if k not in seen and not done.has(*k):
                seen.add(k)
                keep.append(p)
        out.append((eid, keep))
    return out


def _spans(placed: Iterable[tuple[str, int, Any, Any]]) -> dict[str, tuple[int, int]]:
    """Per ring, the lowest and highest sequence number among ``placed``."""
    out: dict[str, tuple[int, int]] = {}
    for ring, seq, _, _ in placed:
        lo, hi = out.get(ring, (seq, seq))
        out[ring] = (min(lo, seq), max(hi, seq))
    return out


def _runs(placed: list[tuple[str, int, Any, Any]]) -> list[tuple[str, int, int]]:
    """``placed`` as runs of consecutive sequence numbers per ring."""
    out: list[tuple[str, int, int]] = []
    for ring, seq in sorted({(p[0], p[1]) for p in placed}):
        if out and out[-1][0] == ring and out[-1][2] == seq - 1:
            out[-1] = (ring, out[-1][1], seq)
        else:
            out.append((ring, seq, seq))
    return out
