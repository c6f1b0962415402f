"""``mongo`` sink (the seed's): pymongo ``insert_many(ordered=False)``.

Each document is the record's own fields with ``_id`` set to the record's
stable id. Times are BSON dates (milliseconds: a msgpack timestamp's finer
digits are cut); an ``Int64`` (iam's ``timestamp``) is a BSON int64, other
integers are int32 when they fit. A record BSON cannot hold (an integer
beyond 64 bits, a key that is not a string) is left out and named in
``PermanentError.rejected``. A redelivered batch fails only with duplicate-key errors (code
11000) for the documents already stored; a ``BulkWriteError`` made of
nothing else counts as success, so the sink deduplicates.

Deadline: the write runs inside ``pymongo.timeout(time left)``, which the
driver turns into socket timeouts, server selection timeout and
``maxTimeMS``, so the server stops the write too.

Errors: network errors, server selection timeouts, timeouts, write-concern
errors and the server's transient codes (not primary, shutting down, ...)
are retryable; everything else (bad documents, auth failure, ...) is
permanent.

Options: ``uri`` (``mongodb://`` or ``mongodb+srv://``), ``username`` and
``password`` (or env ``COLLECTOR_MONGO_PASSWORD``; the password and the
URI are never logged), ``auth_source``, TLS (``tls``, ``tls_ca_file``,
``tls_certificate_key_file``, ``tls_allow_invalid_certificates``,
``tls_allow_invalid_hostnames``), and an
optional capped collection (``capped_size_bytes``, ``capped_max_documents``)
created in ``open`` when the collection does not exist yet.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, SecretStr, field_validator

from collector.common.log import get_logger
from collector.common.redact import SecretUrl, remember

from ._base import (
    Batch,
    PermanentError,
    Record,
    RetryableError,
    Sink,
    SinkConfig,
    Verdict,
    register,
)
from ._values import Int64

log = get_logger(__name__)

PASSWORD_ENV = "COLLECTOR_MONGO_PASSWORD"
DUPLICATE_KEY = 11000
# Server error codes that mean "try again": not primary, shutting down, stepping
# down, network or host trouble, exceeded time limit, write conflict.
RETRYABLE_CODES = frozenset({
    6, 7, 50, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
})


class MongoConfig(SinkConfig):
    """``meta`` of a ``mongo`` sink."""

    uri: SecretUrl = SecretUrl("mongodb://127.0.0.1:27017")  # may hold a password
    database: str = Field(default="collector", min_length=1)
    collection: str = Field(default="analytics", min_length=1)
    username: str | None = None
    password: SecretStr | None = Field(default=None, description=f"or env {PASSWORD_ENV}")
    auth_source: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    tls_certificate_key_file: str | None = None
    tls_allow_invalid_certificates: bool = False
    tls_allow_invalid_hostnames: bool = False
    connect_timeout_s: float = Field(default=10.0, gt=0)
    capped_size_bytes: int = Field(default=0, ge=0,
                                   description="create a capped collection this big; 0 = not")
    capped_max_documents: int = Field(default=0, ge=0, description="0 = no document limit")

    @field_validator("uri")
    @classmethod
    def _scheme(cls, value: SecretUrl) -> SecretUrl:
        if not value.get_secret_value().startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("uri must start with mongodb:// or mongodb+srv://")
        return value


@register
class MongoSink(Sink):
    name = "mongo"
    Config = MongoConfig
    deduplicates = True
    requires = ("pymongo",)
    extra = "mongo"

    def __init__(self, config: MongoConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._client: Any = None
        self._coll: Any = None

    def _connect(self) -> Any:
        if self._client is not None:
            return self._coll
        import pymongo

        cfg = self.cfg
        timeout_ms = int(cfg.connect_timeout_s * 1000)
        kwargs: dict[str, Any] = {
            "connectTimeoutMS": timeout_ms,
            "serverSelectionTimeoutMS": timeout_ms,
            "appname": "collector-pump",
        }
        password = cfg.password.get_secret_value() if cfg.password else None
        password = password or os.environ.get(PASSWORD_ENV) or None
        remember(password)
        if cfg.username is not None:
            kwargs["username"] = cfg.username
        if password is not None:
            kwargs["password"] = password
        if cfg.auth_source is not None:
            kwargs["authSource"] = cfg.auth_source
        if cfg.tls:
            kwargs["tls"] = True
            if cfg.tls_ca_file:
                kwargs["tlsCAFile"] = cfg.tls_ca_file
            if cfg.tls_certificate_key_file:
                kwargs["tlsCertificateKeyFile"] = cfg.tls_certificate_key_file
            if cfg.tls_allow_invalid_certificates:
                kwargs["tlsAllowInvalidCertificates"] = True
            if cfg.tls_allow_invalid_hostnames:
                kwargs["tlsAllowInvalidHostnames"] = True
        try:
            self._client = pymongo.MongoClient(cfg.uri.get_secret_value(), **kwargs)
        except pymongo.errors.PyMongoError as exc:
            # e.g. ConfigurationError for a bad URI option; the URI itself is not echoed.
            raise PermanentError(f"mongo sink configuration rejected: {type(exc).__name__}: "
                                 f"{_redact(str(exc), cfg.uri, password)}") from exc
        self._coll = self._client[cfg.database][cfg.collection]
        return self._coll

    def open(self) -> None:
        import pymongo

        coll = self._connect()
        db = coll.database
        try:
            with pymongo.timeout(self.cfg.connect_timeout_s):
                db.command("ping")
                if self.cfg.capped_size_bytes:
                    self._create_capped(db)
        except pymongo.errors.PyMongoError as exc:
            raise self._classify(exc, "open") from exc

    def _create_capped(self, db: Any) -> None:
        import pymongo

        cfg = self.cfg
        if db.list_collection_names(filter={"name": cfg.collection}):
            return  # an existing collection is left as it is
        options: dict[str, Any] = {"capped": True, "size": cfg.capped_size_bytes}
        if cfg.capped_max_documents:
            options["max"] = cfg.capped_max_documents
        try:
            db.create_collection(cfg.collection, **options)
            log.info("Created a capped collection.", collection=cfg.collection,
                     size_bytes=cfg.capped_size_bytes)
        except pymongo.errors.CollectionInvalid:
            pass  # another worker created it first

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        import pymongo
        from bson.errors import InvalidDocument
        from pymongo.errors import BulkWriteError, PyMongoError

        left = self.time_left(deadline)
        if not batch.records:
            return Verdict.OK
        coll = self._connect()
        docs = [_document(r) for r in batch.records]
        rejected: dict[str, str] = {}
        try:
            with pymongo.timeout(left):
                try:
                    coll.insert_many(docs, ordered=False)
                except InvalidDocument:  # BSON cannot hold a record: insert the others
                    docs, rejected = _encodable(docs)
                    if docs:
                        coll.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            details = exc.details or {}
            others = [e for e in details.get("writeErrors", [])
                      if e.get("code") != DUPLICATE_KEY]
            if details.get("writeConcernErrors"):
                raise RetryableError(
                    f"mongo sink write concern not satisfied: "
                    f"{details['writeConcernErrors'][0].get('errmsg')}") from exc
            if not others:  # only documents already stored: a redelivery
                if rejected:
                    raise PermanentError.for_records("mongo", rejected, "stored") from exc
                return Verdict.OK
            first = others[0]
            message = (f"mongo sink: {len(others)} of {len(docs)} documents rejected, first: "
                       f"code {first.get('code')}: {first.get('errmsg')}")
            if all(e.get("code") in RETRYABLE_CODES for e in others):
                raise RetryableError(message) from exc
            raise PermanentError(message) from exc
        except PyMongoError as exc:
            raise self._classify(exc, "write") from exc
        if rejected:
            raise PermanentError.for_records("mongo", rejected, "stored")
        return Verdict.OK

    def health_check(self, *, deadline: float) -> None:
        import pymongo

        left = self.time_left(deadline)
        coll = self._connect()
        try:
            with pymongo.timeout(left):
                coll.database.command("ping")
        except pymongo.errors.PyMongoError as exc:
            raise self._classify(exc, "health check") from exc

    def close(self, timeout_s: float = 5.0) -> None:
        client, self._client, self._coll = self._client, None, None
        if client is not None:
            client.close()

    def _classify(self, exc: Exception, what: str) -> Exception:
        from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

        password = self.cfg.password.get_secret_value() if self.cfg.password else None
        password = password or os.environ.get(PASSWORD_ENV)
        detail = (f"mongo sink {what} failed: {type(exc).__name__}: "
                  f"{_redact(str(exc), self.cfg.uri, password)}")
        if isinstance(exc, ConnectionFailure):  # AutoReconnect, NetworkTimeout, selection
            return RetryableError(detail)
        if isinstance(exc, PyMongoError) and (
                exc.timeout or exc.has_error_label("RetryableWriteError")):
            return RetryableError(detail)
        if isinstance(exc, OperationFailure) and exc.code in RETRYABLE_CODES:
            return RetryableError(detail)
        return PermanentError(detail)


def _document(record: Record) -> dict[str, Any]:
    """The record's fields with ``_id``; an :class:`~pump.sinks.Int64` as a BSON int64."""
    from bson.int64 import Int64 as BsonInt64

    doc = {k: BsonInt64(v) if type(v) is Int64 else v for k, v in record.data.items()}
    doc["_id"] = record.id
    return doc


def _encodable(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The documents BSON can hold, and the ids of the others with the reason."""
    import bson

    good, rejected = [], {}
    for doc in docs:
        try:
            bson.encode(doc)
        except (bson.errors.InvalidDocument, OverflowError) as exc:
            rejected[str(doc["_id"])] = f"not a BSON document: {exc}"
        else:
            good.append(doc)
    return good, rejected


def _redact(text: str, uri: SecretUrl, password: str | None) -> str:
    text = text.replace(uri.get_secret_value(), "<uri>")
    if password:
        text = text.replace(password, "***")
    return text

