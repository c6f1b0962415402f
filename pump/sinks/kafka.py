"""``kafka`` sink: one message per record through confluent-kafka (librdkafka).

Messages
--------
Key: the record id (``key_field: null``), or the text of a record field
(``key_field``; the id when the record lacks it), so one key's records stay
in one partition in order. Value: the record's fields plus its id under
``id_key``, as JSON (times ISO 8601 in UTC with ``Z``, like the other
sinks) or msgpack (``value_format: msgpack``; times the msgpack timestamp
extension). Topic: ``topic``, or the value of the record field
``topic_field`` when it has one. The sink creates no topic.

Delivery
--------
The producer is idempotent (``enable.idempotence``, hence ``acks=all``):
librdkafka's own retries never reorder or duplicate a message. ``write``
produces every record and then serves delivery reports until each message
of the batch has one, or the deadline passes: then the messages still
queued or in flight are purged (their reports say so) and the write raises
``RetryableError``. The write succeeds only when every report succeeded.
Kafka keeps what it acknowledged, so a batch retried after a partial
failure is sent again whole: ``deduplicates = False`` (consumers that need
each record once deduplicate by the key or ``id_key``).

Errors
------
A record the client refuses at once (larger than ``message_max_bytes``,
a bad topic name) or whose report is permanent (``MSG_SIZE_TOO_LARGE``,
``INVALID_RECORD``, ``UNKNOWN_TOPIC_OR_PART`` past the timeout, ...) is
named in ``PermanentError.rejected`` when every other report succeeded.
Any retryable report (timeouts, transport errors, purges, leader changes,
``NOT_ENOUGH_REPLICAS``: ``KafkaError.retriable()`` or librdkafka's local
transient errors) makes the write retryable. A fatal producer error (the
idempotent producer's sequence broken) drops the producer; the next write
makes a new one. The client's error reports (one per reconnect attempt) are
logged once per 10 s per error, librdkafka's own log lines once per 10 s per
facility, in the pump's log format.

TLS and SASL: ``security_protocol``, ``sasl_*`` and ``ssl_*`` are passed to
librdkafka as they are (``sasl_password`` and ``ssl_key_password`` are
secrets, never logged); ``options`` adds any other librdkafka property,
except the ones this sink owns.

Health check: a metadata request (all topics, so that a broker that
auto-creates topics creates none) within the time left: an unreachable
broker or a missing ``topic`` fail it; nothing is produced. A record whose
``topic_field`` names a topic that does not exist waits, on a broker that
does not create it, for librdkafka's metadata until the deadline: retryable.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from collector.common.log import RateLimited, get_logger

from ._base import Batch, PermanentError, RetryableError, Sink, SinkConfig, Verdict, register
from ._encode import dumps, packb, record_object

log = get_logger(__name__)


class _DriverLog:
    """librdkafka's own log lines (served by poll()) as ours, once per 10 s per facility:
    it logs every reconnect attempt. confluent-kafka calls ``log(level, fmt, *args)``."""

    def __init__(self) -> None:
        self.limited = RateLimited(10.0, log)

    def log(self, level: int, fmt: str, facility: str = "", name: str = "",
            message: str = "", *rest: object) -> None:
        self.limited.log(facility, level, "The Kafka client logged.", facility=facility,
                         detail=message)

#: librdkafka properties this sink sets itself (``options`` may not override them).
_OWNED = frozenset({"bootstrap.servers", "enable.idempotence", "acks", "compression.type",
                    "message.max.bytes", "linger.ms", "error_cb", "logger",
                    "security.protocol"})
#: librdkafka's local error names (``KafkaError.name()``) that a later try may not hit.
_LOCAL_RETRYABLE = frozenset({
    "_MSG_TIMED_OUT", "_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_PURGE_QUEUE",
    "_PURGE_INFLIGHT", "_QUEUE_FULL", "_WAIT_COORD", "_RESOLVE", "_DESTROY",
    "_TIMED_OUT_QUEUE", "_FENCED", "_INCONSISTENT", "_OUTDATED"})
#: Errors of the idempotent producer's own state (its id, epoch or sequence): the
#: producer is dropped and the batch retried with a new one.
_PRODUCER_BROKEN = frozenset({
    "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH", "OUT_OF_ORDER_SEQUENCE_NUMBER",
    "UNKNOWN_PRODUCER_ID", "INVALID_PRODUCER_ID_MAPPING", "_FATAL", "_FENCED"})


class KafkaConfig(SinkConfig):
    """``meta`` of a ``kafka`` sink."""

    bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1,
                                   description="host:port[,host:port...]")
    topic: str = Field(default="analytics", min_length=1)
    topic_field: str | None = Field(default=None, description="record field naming the topic")
    key_field: str | None = Field(default=None, description="record field of the key; null: id")
    id_key: str = Field(default="_id", min_length=1)
    value_format: Literal["json", "msgpack"] = "json"
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    linger_ms: float = Field(default=5.0, ge=0)
    message_max_bytes: int = Field(default=1_000_000, ge=1000, le=1_000_000_000)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    security_protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = "plaintext"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    ssl_verify_hostname: bool = True
    options: dict[str, str] = Field(default_factory=dict,
                                    description="more librdkafka properties")

    @field_validator("options")
    @classmethod
    def _not_owned(cls, value: dict[str, str]) -> dict[str, str]:
        owned = sorted(_OWNED & set(value))
        if owned:
            raise ValueError(f"options may not set {owned}: the sink sets them itself")
        return value

    def producer_config(self) -> dict[str, Any]:
        """librdkafka's properties (secrets in clear: never log the result)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": self.compression,
            "linger.ms": self.linger_ms,
            "message.max.bytes": self.message_max_bytes,
            "security.protocol": self.security_protocol,
            "socket.connection.setup.timeout.ms": int(self.connect_timeout_s * 1000),
        }
        if self.security_protocol.startswith("sasl"):
            conf["sasl.mechanism"] = self.sasl_mechanism
            if self.sasl_username is not None:
                conf["sasl.username"] = self.sasl_username
            if self.sasl_password is not None:
                conf["sasl.password"] = self.sasl_password.get_secret_value()
        for key, value in (("ssl.ca.location", self.ssl_ca_location),
                           ("ssl.certificate.location", self.ssl_certificate_location),
                           ("ssl.key.location", self.ssl_key_location)):
            if value is not None:
                conf[key] = value
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        if self.security_protocol.endswith("ssl"):
            conf["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_verify_hostname else "none")
        conf.update(self.options)
        return conf


class _Reports:
    """Delivery reports of one write: how many are awaited, and the failures by id."""

    __slots__ = ("failed", "pending")

    def __init__(self) -> None:
        self.pending = 0
        self.failed: dict[str, Any] = {}  # record id -> KafkaError

    def callback(self, rid: str) -> Any:
        def on_delivery(err: Any, msg: Any) -> None:
            self.pending -= 1
            if err is not None:
                self.failed[rid] = err
        return on_delivery


def _retryable(err: Any) -> bool:
    return (bool(err.retriable()) or err.name() in _LOCAL_RETRYABLE
            or err.name() in _PRODUCER_BROKEN or bool(err.fatal()))


@register
class KafkaSink(Sink):
    name = "kafka"
    Config = KafkaConfig
    deduplicates = False
    requires = ("confluent_kafka",)
    extra = "kafka"

    def __init__(self, config: KafkaConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._producer: Any = None
        self._fatal: Any = None
        self._limited = RateLimited(10.0, log)  # the client reports each reconnect attempt
        self._encode = self._json if config.value_format == "json" else self._msgpack

    def _json(self, data: dict[str, Any]) -> bytes:
        return dumps(data)

    def _msgpack(self, data: dict[str, Any]) -> bytes:
        try:
            return packb(data)
        except (TypeError, ValueError) as exc:
            raise PermanentError(f"a record cannot be msgpack-encoded: {exc}") from exc

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = err
        self._limited.warning(err.name(), "The Kafka client reported an error.", sink=self.name,
                              error=str(err))

    def _client(self) -> Any:
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            self.close(timeout_s=0)
            raise RetryableError(f"kafka sink: the producer failed ({fatal}); a new one "
                                 "is made for the next write")
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer({**self.cfg.producer_config(), "error_cb": self._on_error,
                                       "logger": _DriverLog()})
        return self._producer

    def open(self) -> None:
        self.health_check(deadline=time.monotonic() + self.cfg.connect_timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            # what is still unreported belongs to a batch that was not acknowledged
            if timeout_s > 0:
                producer.flush(min(timeout_s, 1.0))
            producer.purge()
            producer.poll(0)

    def _message(self, record: Any) -> tuple[str, bytes, bytes]:
        cfg, data = self.cfg, record.data
        topic = cfg.topic
        if cfg.topic_field is not None and data.get(cfg.topic_field) not in (None, ""):
            topic = str(data[cfg.topic_field])
        key = record.id
        if cfg.key_field is not None and data.get(cfg.key_field) is not None:
            key = str(data[cfg.key_field])
        return topic, key.encode(), self._encode(record_object(record, cfg.id_key))

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        from confluent_kafka import KafkaException

        self.time_left(deadline)
        if not len(batch):
            return Verdict.OK
        producer = self._client()
        reports = _Reports()
        rejected: dict[str, str] = {}
        for r in batch.records:
            try:
                topic, key, value = self._message(r)
            except PermanentError as exc:
                rejected[r.id] = str(exc)
                continue
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=reports.callback(r.id))
                    reports.pending += 1
                    break
                except BufferError:  # the local queue is full: serve reports, then again
                    producer.poll(min(0.05, self.time_left(deadline)))
                except KafkaException as exc:
                    err = exc.args[0]
                    if _retryable(err):
                        raise RetryableError(f"kafka sink: cannot produce: {err}") from exc
                    rejected[r.id] = f"{err.name()}: {err.str()}"
                    break
                except (TypeError, ValueError) as exc:  # a topic name librdkafka refuses
                    rejected[r.id] = f"{type(exc).__name__}: {exc}"
                    break
        self._await(producer, reports, deadline)
        retry = {rid: e for rid, e in reports.failed.items() if _retryable(e)}
        if retry:
            rid, err = next(iter(retry.items()))
            if any(e.fatal() or e.name() in _PRODUCER_BROKEN for e in retry.values()):
                self.close(timeout_s=0)  # a new producer (id, epoch) for the next write
            raise RetryableError(f"kafka sink: {len(retry)} message(s) not delivered, "
                                 f"e.g. {rid}: {err.name()}: {err.str()}")
        for rid, err in reports.failed.items():
            rejected[rid] = f"{err.name()}: {err.str()}"
        if rejected:
            raise PermanentError.for_records("kafka", rejected, "delivered")
        return Verdict.OK

    def _await(self, producer: Any, reports: _Reports, deadline: float) -> None:
        """Serve delivery reports until every message of this write has one, or the
        deadline passes: then purge what is left and raise RetryableError."""
        while reports.pending > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            producer.poll(min(left, 0.1))
            if self._fatal is not None:
                break
        if reports.pending > 0:
            n = reports.pending
            # Queued and in flight are purged (each gets a _PURGE_* report) and the
            # producer dropped: the idempotent producer's sequence has a gap now, and
            # the next write starts with a new producer id.
            self.close(timeout_s=0)
            raise RetryableError(f"kafka sink: {n} delivery report(s) missing at the deadline")

    def health_check(self, *, deadline: float) -> None:
        from confluent_kafka import KafkaException

        left = self.time_left(deadline)
        producer = self._client()
        try:
            # every topic's metadata: asking for one topic by name makes brokers that
            # auto-create topics create it, a side effect a health check must not have
            meta = producer.list_topics(timeout=left)
        except KafkaException as exc:
            raise RetryableError(f"kafka sink health check: no metadata within {left:.1f} s: "
                                 f"{exc.args[0]}") from exc
        topic = meta.topics.get(self.cfg.topic)
        if topic is None or topic.error is not None:
            why = topic.error if topic is not None else "not in the metadata"
            raise RetryableError(f"kafka sink health check: topic {self.cfg.topic!r}: {why}")
