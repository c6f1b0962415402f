"""The PostgreSQL server's own floor for ``bench pump``'s postgres runs.

The postgres sink's target (issue 18: 120,000 records/s per worker) is
bounded by the server as much as by the worker: one sink's batch is one
``COPY`` into one backend, which uses one core, and on the 2-core test
machine that core is shared with the worker. :func:`server_floor` measures
what the server alone does with the sink's own rows: the bench's records
encoded once beforehand by the sink's encoder (``pump/sinks/_pgcopy.py``),
then ``COPY``-ed in the sink's batches (one transaction each, committed)
into a table the sink creates, fresh for the run. It gives records/s (wall),
the backend's CPU per record (``/proc``) and the wall time per record the
commits took (the WAL flush, which the sink's batch waits for as well). The
wall figure is the most a worker got into that table in this run; the CPU
figure, as records/s of one core, the most any worker can reach on an idle
machine whatever the client does (it varies less with other load).
:func:`backend_pids` finds the backends of a sink run (by
``application_name``), whose CPU (:func:`pid_cpu`) each run shows per record
beside the worker's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ormsgpack

from pump.sinks._pgcopy import copy_stream
from pump.sinks.postgres import PostgresConfig, PostgresSink

_TICK = os.sysconf("SC_CLK_TCK")
_COLUMNS = "(id, ts, username, effect, record)"


@dataclass(frozen=True)
class PgFloor:
    """The server's floor: records/s (wall), backend CPU per record (us), and the
    wall time per record spent in ``COMMIT`` (us: the WAL flush the batch waits for)."""

    rate: float
    cpu_us: float
    commit_us: float

    @property
    def core_rate(self) -> float:
        """Records/s of one core of the server at that CPU per record."""
        return 1e6 / max(self.cpu_us, 1e-9)


def pid_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid``; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def backend_pids(dsn: str, application_name: str) -> list[int]:
    """The server pids of the connections named ``application_name``."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                            (application_name,)).fetchall()
    return [int(row[0]) for row in rows]


def server_floor(dsn: str, table: str, raws: Sequence[bytes], batch: int, total: int,
                 repeat: int = 3) -> PgFloor:
    """The server's floor for ``table`` (created by the sink, dropped before and
    after each round): ``total`` records made of ``raws`` (ids unique), ``batch``
    a transaction; best of ``repeat`` rounds."""
    import psycopg

    datas = [ormsgpack.unpackb(raw) for raw in raws]
    ids = [f"{'f' * 32}:{i}" for i in range(total)]
    fields = [datas[i % len(datas)] for i in range(total)]
    cfg = PostgresConfig(dsn=dsn, table=table)
    streams = [copy_stream(ids[i:i + batch], fields[i:i + batch], cfg.timestamp_field,
                           cfg.username_field, cfg.effect_field)[0]
               for i in range(0, total, batch)]
    best_rate, best_cpu, best_commit = 0.0, float("inf"), 0.0
    for _ in range(repeat):
        with psycopg.connect(dsn) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            with conn.cursor() as cur:
                PostgresSink(cfg)._create_table(cur)
            conn.commit()
            pid = conn.info.backend_pid
            cpu0, t0, committing = pid_cpu(pid), time.perf_counter(), 0.0
            with conn.cursor() as cur:
                for data in streams:
                    with cur.copy(f"COPY {table} {_COLUMNS} FROM STDIN (FORMAT binary)") as copy:
                        copy.write(data)
                    c0 = time.perf_counter()
                    conn.commit()
                    committing += time.perf_counter() - c0
            wall, cpu = time.perf_counter() - t0, pid_cpu(pid) - cpu0
            conn.execute(f"DROP TABLE {table}")
            conn.commit()
        if total / wall > best_rate:
            best_rate, best_commit = total / wall, committing / total * 1e6
        best_cpu = min(best_cpu, cpu / total * 1e6)
    return PgFloor(best_rate, best_cpu, best_commit)
