"""iam-pump's own configuration runs: its ``iam-pump.yaml`` (every key mapped, one
warning per key without an equivalent), its kafka, influx and elasticsearch
pumps mapped onto our sinks, an iam file's kafka pump against a real
Kafka-compatible broker, and a filter on a field iam's records lack warned
at start. Records come from the real Go encoder (``tests/_iam.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from collector.testing import (
    KafkaBroker,
    MongoPeer,
    Pump,
    RedisServer,
    account,
    free_port,
    wait_until,
    write_config,
)
from tests._iam import (
    ROOT,
    index,
    produce,
)


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
