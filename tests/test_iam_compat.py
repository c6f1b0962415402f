"""Records from the real iam-authz-server encoder reach every sink as iam-pump stores them.

The peer is Go, not Python: ``tests/iam_peer/main.go`` is built once per
session from Debian's packages (``golang-go``,
``golang-github-vmihailenco-msgpack.v5-dev``, ``golang-gopkg-mgo.v2-dev``) in
GOPATH mode. It encodes varied ``AnalyticsRecord`` values (unicode, long
request JSON, empty and zero values, a zero ``ExpireAt``, times before 1970)
with ``msgpack.Marshal`` as iam-authz-server does, RPUSHes them onto a real
redis-server list, and writes what iam-pump makes of each one: the struct
decoded back with msgpack v5 and marshalled by ``encoding/json``, by mgo's
``bson`` (iam-pump's MongoDB driver) and as its csv pump's row. The pump
drains the list into jsonl, csv (``csv_style: iam``), PostgreSQL and MongoDB
(the real pymongo driver against ``mockupdb``, a MongoDB wire-protocol peer:
``mongod`` is not packaged for Debian), and every record is compared field
by field, for MongoDB byte by byte. ``-s`` prints the counts.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import psycopg
import pytest

from collector.testing import (
    KafkaBroker,
    MongoPeer,
    Pump,
    RedisServer,
    account,
    drop_tables,
    free_port,
    group_lags,
    jsonl_records,
    pg_dsn,
    unique_table,
    wait_until,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
LIST = "analytics-iam-system-analytics"
LIST_RING = f"list-{LIST}"
N = 1000


@dataclass
class Reference:
    """What iam-pump stores for each record, by its index on the list."""

    csv_header: str
    json: list[dict[str, Any]]
    bson: list[bytes]
    csv: list[str]
    counts: dict[str, int]


@pytest.fixture(scope="session")
def iam_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go peer, built once per session."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed: run `sh .ci/setup` (golang-go)")
    out = tmp_path_factory.mktemp("iam_peer")
    env = {**os.environ, "GO111MODULE": "off",
           "GOPATH": f"{out / 'gopath'}:/usr/share/gocode"}
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build")
                   if os.environ.get("HOME") else str(out / "gocache"))
    binary = out / "iam_peer"
    subprocess.run([go, "build", "-o", str(binary), str(ROOT / "tests/iam_peer/main.go")],
                   env=env, check=True, capture_output=True, timeout=600)
    return binary


def run_peer(binary: Path, *args: str) -> str:
    """Run the peer in UTC (iam-pump's container zone) and return its output."""
    done = subprocess.run([str(binary), *args], env={**os.environ, "TZ": "UTC"},
                          check=True, capture_output=True, text=True, timeout=120)
    return done.stdout


def produce(binary: Path, redis: RedisServer, reference: Path, n: int = N,
            password: str | None = None) -> Reference:
    args = ["-n", str(n), "-redis", f"127.0.0.1:{redis.port}", "-reference", str(reference)]
    if password:
        args += ["-password", password]
    run_peer(binary, *args)
    lines = [json.loads(line) for line in reference.read_text().splitlines()]
    recs = lines[1:-1]
    return Reference(lines[0]["csv_header"], [r["json"] for r in recs],
                     [base64.b64decode(r["bson"]) for r in recs], [r["csv"] for r in recs],
                     lines[-1])


def index(record_id: str) -> int:
    ring, _, seq = record_id.rpartition(":")
    assert ring == LIST_RING, record_id
    return int(seq)


def dead_letters(r: Any, sink: str) -> int:
    return int(r.xlen(f"collector:analytics:dead:{sink}"))


def drained(r: Any, sinks: list[str]) -> bool:
    lags = group_lags(r)
    return r.llen(LIST) == 0 and all(lags.get(s, 1) == 0 for s in sinks)


def test_iam_records_reach_every_sink_as_iam_pump_stores_them(
        iam_peer: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    r = redis_server.client()
    mongo = MongoPeer().start()
    table = unique_table("iam_compat")
    pumps = {
        "jsonl": {"type": "file", "meta": {"path": str(tmp_path / "out.jsonl")}},
        "csv": {"type": "file", "meta": {"path": str(tmp_path / "csv"), "format": "csv",
                                         "csv_style": "iam"}},
        "postgres": {"type": "postgres", "meta": {"dsn": pg_dsn(), "table": table}},
        "mongo": {"type": "mongo", "meta": {"uri": mongo.uri, "database": "iam",
                                            "collection": "analytics"}},
    }
    pump = Pump.write(tmp_path, redis_server.url, pumps, source={"type": "list"})
    try:
        pump.start()
        t0 = time.time()
        ref = produce(iam_peer, redis_server, tmp_path / "reference.jsonl")
        wait_until(lambda: drained(r, list(pumps)), 120, "every sink to take every record")
        t1 = time.time()
        pump.stop()

        # jsonl: iam-pump's decoded fields, in its order, expireAt as its ISO 8601 text
        seen = {}
        for line in jsonl_records(tmp_path / "out.jsonl"):
            i = index(line.pop("_id"))
            assert list(line) == list(ref.json[i]) and line == ref.json[i], i
            seen[i] = seen.get(i, 0) + 1
        jsonl = account(seen, range(N))

        # csv: iam-pump's file names, header and row text
        names = {run_peer(iam_peer, "-csv-name", str(int(t))).strip() for t in (t0, t1)}
        files = sorted((tmp_path / "csv").iterdir(), key=lambda p: p.stat().st_mtime)
        assert {f.name for f in files} <= names, (files, names)
        rows = ""
        for f in files:
            text = f.read_text()
            assert text.startswith(ref.csv_header)
            rows += text[len(ref.csv_header):]
        assert rows == "".join(ref.csv)

        # postgres: the fields in jsonb, expireAt a timestamptz when cast, ts from timestamp
        with psycopg.connect(pg_dsn()) as conn:
            stored = conn.execute(
                f"SELECT id, record, ts, (record->>'expireAt')::timestamptz FROM {table}"
            ).fetchall()
        pg_seen = {}
        for rid, record, ts, expire in stored:
            i = index(rid)
            want = ref.json[i]
            assert record == want, i
            assert ts == datetime.fromtimestamp(want["timestamp"], UTC)
            assert expire == _micro(want["expireAt"])
            pg_seen[i] = 1
        pg = account(pg_seen, range(N))

        # mongo: the very BSON document mgo writes (field order, int64, dates), plus _id
        docs = mongo.stored("iam", "analytics")
        mongo_seen = {}
        for rid, doc in docs.items():
            i = index(rid)
            body = {k: v for k, v in doc.items() if k != "_id"}
            assert isinstance(body["expireAt"], datetime)
            assert bson.encode(body) == ref.bson[i], i
            mongo_seen[i] = 1
        mg = account(mongo_seen, range(N))

        dead = {s: dead_letters(r, s) for s in pumps}
        print(f"\niam records from the Go encoder: {N}; jsonl {jsonl.distinct} equal "
              f"(lost {jsonl.lost}), csv {len(ref.csv)} rows equal, postgres {pg.distinct} "
              f"equal (lost {pg.lost}), mongo {mg.distinct} equal (lost {mg.lost}); "
              f"dead letters {dead}")
        assert jsonl.ok and pg.ok and mg.ok
        assert (jsonl.distinct, pg.distinct, mg.distinct) == (N, N, N)
        assert dead == dict.fromkeys(pumps, 0)
    finally:
        pump.close()
        mongo.stop()
        drop_tables(table)


def _micro(iso: str) -> datetime:
    """Go's RFC 3339 text as PostgreSQL reads it: the fraction rounded to the
    microsecond with ``rint`` (half to even on the double), not cut."""
    head, dot, frac = iso.removesuffix("Z").partition(".")
    at = datetime.fromisoformat(head + "+00:00")
    return at + timedelta(microseconds=round(float("0." + frac) * 1_000_000) if dot else 0)


def test_filters_and_omit_count_as_iam_pump_counts(
        iam_peer: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    r = redis_server.client()
    pumps = {
        "users": {"type": "file", "filters": {"usernames": ["alice", "张三"]},
                  "meta": {"path": str(tmp_path / "users.jsonl")}},
        "skip": {"type": "file", "filters": {"skip_usernames": ["bob", "carol"]},
                 "meta": {"path": str(tmp_path / "skip.jsonl")}},
        "all": {"type": "file", "omit_detailed_recording": False,
                "meta": {"path": str(tmp_path / "all.jsonl")}},
    }
    pump = Pump.write(tmp_path, redis_server.url, pumps, source={"type": "list"},
                      omit_detailed_recording=True)
    try:
        pump.start()
        ref = produce(iam_peer, redis_server, tmp_path / "reference.jsonl")
        wait_until(lambda: drained(r, list(pumps)), 120, "every sink to take every record")
        pump.stop()
    finally:
        pump.close()
    got = {name: list(jsonl_records(tmp_path / f"{name}.jsonl")) for name in pumps}
    print(f"\nfilters: usernames kept {len(got['users'])} (iam-pump "
          f"{ref.counts['usernames_kept']}), skip_usernames kept {len(got['skip'])} (iam-pump "
          f"{ref.counts['skip_usernames_kept']}); omitted detail in "
          f"{sum(1 for recs in got.values() for x in recs if not x['policies'])} of "
          f"{sum(len(recs) for recs in got.values())}")
    assert len(got["users"]) == ref.counts["usernames_kept"] > 0
    assert len(got["skip"]) == ref.counts["skip_usernames_kept"] > 0
    assert len(got["all"]) == N
    assert {x["username"] for x in got["users"]} <= {"alice", "张三"}
    # the top-level omit_detailed_recording applies before every sink; a sink's false
    # does not undo it (iam-pump's rule)
    assert all(x["policies"] == "" and x["deciders"] == "" for recs in got.values() for x in recs)
    assert sum(1 for x in ref.json if x["policies"]) > 0
    assert all(dead_letters(r, s) == 0 for s in pumps)


def test_a_filter_on_a_field_iam_records_lack_is_a_warning_at_start(tmp_path: Path) -> None:
    path = write_config(tmp_path / "pump.yaml", {
        "source": {"type": "list"},
        "pumps": {"f": {"type": "null", "filters": {"include": {"Username": ["alice"]}}}},
    })
    done = subprocess.run([str(ROOT / ".venv/bin/collector-pump"), "--config", str(path),
                           "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stderr.splitlines() if "'Username'" in x]
    assert len(lines) == 1 and "did you mean 'username'" in lines[0]
    assert "every record would be filtered out" in lines[0]


# iam-pump's configs/iam-pump.yaml (marmotedu/iam): its keys and values, comments left
# out; ${...} are its placeholders, filled by the test.
IAM_PUMP_YAML = """\
purge-delay: 10
health-check-path: healthz
health-check-address: 0.0.0.0:7070
omit-detailed-recording: true
redis:
  host: ${REDIS_HOST}
  port: ${REDIS_PORT}
  password: ${REDIS_PASSWORD}
  database: 0
  optimisation-max-idle: 100
  optimisation-max-active: 0
  enable-cluster: false
pumps:
  mongo:
    type: mongo
    meta:
      collection_name: ${IAM_PUMP_COLLECTION_NAME}
      mongo_url: ${IAM_PUMP_MONGO_URL}
      collection_cap_max_size_bytes: 1048576
      collection_cap_enable: true
log:
    name: pump
    development: true
    level: debug
    format: console
    enable-color: true
    disable-caller: false
    disable-stacktrace: false
    output-paths: ${IAM_LOG_DIR}/iam-pump.log,stdout
    error-output-paths: ${IAM_LOG_DIR}/iam-pump.error.log
"""


def test_iam_pumps_own_config_file_runs(iam_peer: Path, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", password="pump-secret").start()
    mongo = MongoPeer().start()
    health = f"127.0.0.1:{free_port()}"  # 0.0.0.0:7070 may be taken on a shared machine
    text = IAM_PUMP_YAML.replace("0.0.0.0:7070", health)
    for name, value in {
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port),
        "REDIS_PASSWORD": "pump-secret", "IAM_PUMP_COLLECTION_NAME": "iam_analytics",
        "IAM_PUMP_MONGO_URL": f"mongodb://localhost:{mongo.server.port}/iam_analytics"
                              "?directConnection=true",
        "IAM_LOG_DIR": str(tmp_path / "logs"),
    }.items():
        text = text.replace("${" + name + "}", value)
    path = tmp_path / "iam-pump.yaml"
    path.write_text(text)
    pump = Pump(path, address=health)
    try:
        pump.start()
        produce(iam_peer, redis, tmp_path / "reference.jsonl", n=200, password="pump-secret")
        wait_until(lambda: len(mongo.stored("iam_analytics", "iam_analytics")) == 200, 60,
                   "the 200 records in MongoDB")
        pump.stop()
        log = pump.log_text()
    finally:
        pump.close()
        mongo.stop()
        redis.kill()
    docs = list(mongo.stored("iam_analytics", "iam_analytics").values())
    assert all(d["policies"] == "" and d["deciders"] == "" for d in docs)  # omit: true
    assert all(isinstance(d["expireAt"], datetime) for d in docs)
    assert mongo.options[("iam_analytics", "iam_analytics")] == {"capped": True,
                                                                 "size": 1048576}
    for key in ("redis.optimisation-max-idle", "redis.optimisation-max-active", "log.name",
                "log.development", "log.enable-color", "log.disable-caller",
                "log.disable-stacktrace", "log.output-paths", "log.error-output-paths"):
        assert log.count(f"iam-pump key {key}:") == 1, key
    assert "pump-secret" not in log


# iam-pump's kafka, influx and elasticsearch pumps with every meta key they read
# (marmotedu/iam internal/pump/pumps/*.go), the secrets' values looked for in the output
IAM_MORE_PUMPS_YAML = """\
purge-delay: 10
health-check-address: 127.0.0.1:7070
redis:
  host: 127.0.0.1
  port: 6379
pumps:
  kafka:
    type: kafka
    meta:
      broker: [127.0.0.1:9092, 127.0.0.1:9093]
      client_id: iam-pump
      topic: iam-analytics
      timeout: 7
      compressed: true
      meta_data: {env: prod}
      use_ssl: true
      ssl_insecure_skip_verify: true
      ssl_cert_file: /etc/pump/cert.pem
      ssl_key_file: /etc/pump/key.pem
      sasl_mechanism: SCRAM
      sasl_algorithm: sha-512
      sasl_username: pump
      sasl_password: kafka-secret
  influx:
    type: influx
    meta:
      database_name: iam
      address: http://127.0.0.1:8086
      username: pump
      password: influx-secret
      fields: [request, policies]
      tags: [username, effect]
  es:
    type: elasticsearch
    meta:
      index_name: iam_analytics
      elasticsearch_url: http://127.0.0.1:9200,http://127.0.0.2:9200
      use_sniffing: true
      document_type: iam_analytics
      rolling_index: true
      disable_bulk: true
      auth_api_key_id: kid
      auth_api_key: es-secret
      auth_basic_username: elastic
      bulk_config: {workers: 2, flush_interval: 1, bulk_actions: 1000, bulk_size: 5242880}
"""


def test_iam_kafka_influx_and_elasticsearch_pumps_map_onto_our_sinks(tmp_path: Path) -> None:
    """``--check`` accepts the file, one warning line per key without an equivalent and
    no secret; the sinks' validated configs carry iam-pump's settings."""
    from pump.config import load_config
    from pump.sinks.elasticsearch import ElasticsearchConfig
    from pump.sinks.influx import InfluxConfig
    from pump.sinks.kafka import KafkaConfig

    path = tmp_path / "iam-pump.yaml"
    path.write_text(IAM_MORE_PUMPS_YAML)
    done = subprocess.run([str(ROOT / ".venv/bin/collector-pump"), "--config", str(path),
                           "--check"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("COLLECTOR_")})
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    unmapped = ["pumps.kafka.meta.meta_data", "pumps.es.meta.use_sniffing",
                "pumps.es.meta.document_type", "pumps.es.meta.disable_bulk",
                "pumps.es.meta.auth_basic_username", "pumps.es.meta.bulk_config.workers",
                "pumps.es.meta.bulk_config.flush_interval"]
    for key in unmapped:
        assert out.count(f"iam-pump key {key}:") == 1, (key, out)
    assert out.count("iam-pump key pumps.") == len(unmapped), out
    assert "has no mapping yet" not in out
    for secret in ("kafka-secret", "influx-secret", "es-secret"):
        assert secret not in out

    with pytest.warns(Warning):
        cfg = load_config(path, environ={})
    kafka = KafkaConfig.model_validate(cfg.pumps["kafka"].meta)
    assert (kafka.bootstrap_servers, kafka.topic) == ("127.0.0.1:9092,127.0.0.1:9093",
                                                      "iam-analytics")
    assert (kafka.compression, kafka.connect_timeout_s, kafka.security_protocol,
            kafka.sasl_mechanism, kafka.sasl_username) == (
        "snappy", 7.0, "sasl_ssl", "SCRAM-SHA-512", "pump")
    assert kafka.sasl_password is not None
    assert kafka.sasl_password.get_secret_value() == "kafka-secret"
    assert (kafka.ssl_certificate_location, kafka.ssl_key_location) == (
        "/etc/pump/cert.pem", "/etc/pump/key.pem")
    assert not kafka.ssl_verify_hostname
    assert kafka.options == {"client.id": "iam-pump",
                             "enable.ssl.certificate.verification": "false"}
    influx = InfluxConfig.model_validate(cfg.pumps["influx"].meta)
    assert (influx.url.get_secret_value(), influx.database, influx.username,
            influx.fields, influx.tags) == ("http://127.0.0.1:8086", "iam", "pump",
                                            ["request", "policies"], ["username", "effect"])
    assert influx.password is not None
    assert influx.password.get_secret_value() == "influx-secret"
    es = ElasticsearchConfig.model_validate(cfg.pumps["es"].meta)
    assert [h.get_secret_value() for h in es.hosts] == ["http://127.0.0.1:9200",
                                                        "http://127.0.0.2:9200"]
    assert (es.index, es.chunk_size, es.max_chunk_bytes, es.username) == (
        "iam_analytics-%Y.%m.%d", 1000, 5242880, None)
    assert es.api_key is not None and es.api_key.get_secret_value() == "kid:es-secret"
    # defaults: no compression unless compressed, iam-pump's index name
    plain = tmp_path / "plain.yaml"
    plain.write_text("purge-delay: 1\npumps:\n  kafka: {type: kafka, meta: {topic: t}}\n"
                     "  elasticsearch: {}\n")
    cfg = load_config(plain, environ={})
    assert KafkaConfig.model_validate(cfg.pumps["kafka"].meta).compression == "none"
    es = ElasticsearchConfig.model_validate(cfg.pumps["elasticsearch"].meta)
    assert es.index == "iam_analytics"


def test_an_iam_files_kafka_pump_delivers_each_record_once(
        iam_peer: Path, kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    """iam-pump's kafka pump config (its meta keys) run by collector-pump against a real
    broker: every record of the Go encoder read back from the topic once, as iam-pump
    decodes it (plus ``_id``)."""
    redis = RedisServer(tmp_path / "redis").start()
    health = f"127.0.0.1:{free_port()}"
    kafka_broker.create_topic("iam-analytics")
    path = tmp_path / "iam-pump.yaml"
    path.write_text(
        f"purge-delay: 1\nhealth-check-address: {health}\n"
        f"redis:\n  host: 127.0.0.1\n  port: {redis.port}\n"
        "pumps:\n  kafka:\n    type: kafka\n    meta:\n"
        f"      broker: [{kafka_broker.bootstrap}]\n      topic: iam-analytics\n"
        "      client_id: iam-pump\n      compressed: true\n      timeout: 5\n")
    n = 200
    pump = Pump(path, address=health)
    try:
        pump.start()
        ref = produce(iam_peer, redis, tmp_path / "reference.jsonl", n=n)
        values: dict[int, dict[str, Any]] = {}

        def key(msg: Any) -> str:
            value = json.loads(msg.value())
            i = index(value.pop("_id"))
            values[i] = value
            return str(i)

        seen = kafka_broker.consume("iam-analytics", lambda c: len(c) >= n, key=key,
                                    timeout=60)
        pump.stop()
    finally:
        pump.close()
        redis.kill()
    got = account({int(k): c for k, c in seen.items()}, range(n))
    print(f"\niam file's kafka pump: {got}")
    assert got.ok and got.distinct == n, got
    assert all(values[i] == ref.json[i] for i in range(n))
