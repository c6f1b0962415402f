"""The servers ``bench pump`` writes the kafka, influx, elasticsearch and aggregate sinks into.

kafka: a tansu broker (``collector.testing.KafkaBroker``, memory storage), a
topic of 3 partitions per run; influx: a private ``influxd``
(``InfluxServer``), a database per run; elasticsearch: ``EsPeer``, the
wire-level bulk API peer of the tests, keeping ids but not sources (no
Elasticsearch server can be installed here; the peer is Python in the
bench's own process, so that figure bounds the peer as much as the sink);
mongo: ``MongoPeer``, the tests' mockupdb wire-protocol server, keeping ids
only (no MongoDB can be installed here: a sanity check of the sink's
``insert_many(ordered=False)`` path, not a MongoDB figure; Python in the
bench's process like the elasticsearch peer);
aggregate: the machine's PostgreSQL ($COLLECTOR_TEST_PG_DSN), a table per run
(per-minute rows by username and effect, with ``latency_us`` summed and sketched),
dropped afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collector.testing import (
    EsPeer,
    InfluxServer,
    KafkaBroker,
    MongoPeer,
    drop_tables,
    pg_dsn,
)

SINKS = ("kafka", "influx", "elasticsearch", "mongo", "aggregate")


class SinkPeers:
    """Started on first use, one of each; ``meta(sink, run)`` is a run's sink meta."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.running: dict[str, Any] = {}
        self.tables: list[str] = []

    def meta(self, sink: str, run: str) -> dict[str, Any]:
        peer = self.running.get(sink)
        if sink == "kafka":
            if peer is None:
                peer = self.running[sink] = KafkaBroker(self.work / "kafka").start()
            peer.create_topic(run, partitions=3)
            return {"bootstrap_servers": peer.bootstrap, "topic": run}
        if sink == "influx":
            if peer is None:
                peer = self.running[sink] = InfluxServer(self.work / "influx").start()
            return {"url": peer.url, "database": run, "create_database": True}
        if sink == "elasticsearch":
            if peer is None:
                peer = self.running[sink] = EsPeer(keep_sources=False).start()
            return {"hosts": [peer.url], "index": f"{run}-%Y.%m.%d"}
        if sink == "mongo":
            if peer is None:
                peer = self.running[sink] = MongoPeer(keep_documents=False).start()
            return {"uri": peer.uri, "database": "bench", "collection": run}
        if sink == "aggregate":
            table = f"bench_agg_{run}"
            drop_tables(table, f"{table}_applied")
            self.tables += [table, f"{table}_applied"]
            return {"dsn": pg_dsn(), "table": table, "bucket": "minute",
                    "dimensions": ["username", "effect"], "numeric_fields": ["latency_us"]}
        raise ValueError(f"no bench peer for sink {sink!r}")

    def stop(self) -> None:
        for peer in self.running.values():
            peer.stop()
        self.running.clear()
        if self.tables:
            drop_tables(*self.tables)
            self.tables.clear()
