"""The aggregate sink's roll-up arithmetic and SQL, apart from its connection handling.

``fold`` sums placed records into rows (count, and per numeric field count,
sum, min, max and a DDSketch-style bin histogram); ``upsert_sql`` is the
one statement that adds a batch's rows to the table; ``FUNCTIONS`` are the
SQL functions created with the table that merge sketches and read
quantiles from them. See ``aggregate.py`` for the table and the guarantees.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ._base import Record
from ._values import time_text

_TINY = 1e-9  # |v| below this counts as zero in the sketch

Placed = list[tuple[tuple[Any, ...], list[float | None]]]

FUNCTIONS = """
CREATE OR REPLACE FUNCTION collector_sketch_merge(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(jsonb_object_agg(k, n), '{}'::jsonb) FROM (
    SELECT k, sum(v::bigint) AS n FROM (
      SELECT key AS k, value AS v FROM jsonb_each_text(coalesce(a, '{}'::jsonb))
      UNION ALL
      SELECT key, value FROM jsonb_each_text(coalesce(b, '{}'::jsonb))) AS both_bins
    GROUP BY k) AS merged
$$;
CREATE OR REPLACE FUNCTION collector_sketch_quantile(s jsonb, q double precision,
                                                     relative_accuracy double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
  WITH g AS (SELECT (1 + relative_accuracy) / (1 - relative_accuracy) AS g),
  bins AS (
    SELECT CASE left(key, 1)
             WHEN 'z' THEN 0.0
             WHEN 'p' THEN 2 * power(g.g, substr(key, 2)::int) / (g.g + 1)
             ELSE -2 * power(g.g, substr(key, 2)::int) / (g.g + 1) END AS v,
           value::bigint AS n
    FROM jsonb_each_text(s), g),
  c AS (SELECT v, sum(n) OVER (ORDER BY v) AS cum, sum(n) OVER () AS total FROM bins)
  SELECT v FROM c WHERE cum > q * (total - 1) ORDER BY v LIMIT 1
$$;
"""


class Row:
    """The sums of one (bucket, dimensions) row within one batch."""

    __slots__ = ("count", "stats")

    def __init__(self, n_fields: int) -> None:
        self.count = 0
        # per numeric field: [count, sum, min, max, {bin: n}]
        self.stats: list[list[Any]] = [[0, 0.0, None, None, {}] for _ in range(n_fields)]


def fold(placed: Iterable[Placed], n_fields: int, inv_log_gamma: float
         ) -> dict[tuple[Any, ...], Row]:
    """Sum records placed as ((bucket, *dimensions), numeric values) into rows."""
    rows: dict[tuple[Any, ...], Row] = {}
    inv = inv_log_gamma
    for contributions in placed:
        for key, values in contributions:
            row = rows.get(key)
            if row is None:
                row = rows[key] = Row(n_fields)
            row.count += 1
            for st, v in zip(row.stats, values, strict=True):
                if v is None:
                    continue
                st[0] += 1
                st[1] += v
                st[2] = v if st[2] is None or v < st[2] else st[2]
                st[3] = v if st[3] is None or v > st[3] else st[3]
                if v > _TINY:
                    b = f"p{math.ceil(math.log(v) * inv)}"
                elif v < -_TINY:
                    b = f"n{math.ceil(math.log(-v) * inv)}"
                else:
                    b = "z"
                st[4][b] = st[4].get(b, 0) + 1
    return rows


def upsert_sql(table: str, dims: list[str], numeric_fields: list[str]) -> str:
    """INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO UPDATE adding a batch's rows."""
    t = table
    names = ["bucket", *dims, "count"]
    types = ["float8", *["text"] * len(dims), "int8"]
    sets = ["count = t.count + excluded.count"]
    for f in numeric_fields:
        c, s, lo, hi, sk = (f'"{f}_{x}"' for x in ("count", "sum", "min", "max", "sketch"))
        names += [c, s, lo, hi, sk]
        types += ["int8", "float8", "float8", "float8", "jsonb"]
        sets += [f"{c} = t.{c} + excluded.{c}", f"{s} = t.{s} + excluded.{s}",
                 f"{lo} = least(t.{lo}, excluded.{lo})",
                 f"{hi} = greatest(t.{hi}, excluded.{hi})",
                 f"{sk} = collector_sketch_merge(t.{sk}, excluded.{sk})"]
    sets.append("updated_at = now()")
    arrays = ", ".join(f"%s::{ty}[]" for ty in types)
    alias = ", ".join(f"c{i}" for i in range(len(names)))
    select = ", ".join(["to_timestamp(c0)", *(f"c{i}" for i in range(1, len(names)))])
    return (f"INSERT INTO {t} AS t ({', '.join(names)}) SELECT {select} "
            f"FROM unnest({arrays}) AS u({alias}) "
            f"ON CONFLICT ({', '.join(['bucket', *dims])}) DO UPDATE SET "
            + ", ".join(sets))


def dim_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    elif isinstance(value, datetime):
        value = time_text(value)
    return str(value).replace("\x00", "\ufffd")


def number(value: Any) -> float | None:
    """A finite int or float (or a numeric string); None for anything else (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | bytes):
        try:
            f = float(value)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def digest(records: Sequence[Record]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for r in records:
        h.update(r.id.encode())
        h.update(b"\n")
    return "records:" + h.hexdigest()
