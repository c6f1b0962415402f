"""``elasticsearch`` sink: the official client's bulk helper, one document per record.

Documents
---------
Index: ``index`` formatted with the record's time (``strftime`` in UTC:
``analytics-%Y.%m.%d`` is one index a day); the record's time is its
``time_field`` (Unix seconds or ms, ISO 8601, a msgpack timestamp), or,
without one, the time Redis added its stream entry, which redelivery keeps.
``_id``: the record id, with the ``index`` operation, so a redelivered
record overwrites its own document (``deduplicates = True``). Source: the
record's fields, times as ISO 8601 in UTC with ``Z`` (like every sink), plus
the record's time under ``timestamp_key`` (``@timestamp``; ``null``: none).
``pipeline`` names an ingest pipeline for every document.

Errors
------
Each item of the bulk response is classified: 429 and 5xx (and
``es_rejected_execution_exception``) are retryable, and the whole batch is
written again (by ``_id``: nothing doubles); any other failure (a mapping
conflict, ``document_parsing_exception``, an invalid index name) names that
record in ``PermanentError.rejected`` once the others are written. A
request answered 429/5xx, a connection error or a timeout is retryable;
401/403 and other 4xx are permanent (the pump finds out from the health
check whether the whole target is down). A record JSON cannot encode, or
whose time is not one, is rejected alone before sending.

Requests: at most ``chunk_size`` documents and ``max_chunk_bytes`` per
bulk request; each request gets the time left as its ``request_timeout``
(capped by ``max_request_s``); the client's own retries are off (the
pump's worker owns retries).

Auth and TLS: ``api_key`` (the encoded key, or ``id:key``) or ``username`` and
``password`` (secrets, never logged); ``ca_certs`` and ``verify_certs`` for
``https://`` hosts. Health check: ``GET /`` (cluster info: reachability,
credentials and the product check), nothing written.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, SecretStr

from collector.common.redact import SecretUrl

from ._base import Batch, PermanentError, RetryableError, Sink, SinkConfig, Verdict, register
from ._encode import dumps
from ._time import entry_seconds, epoch_seconds
from ._values import time_text

# retryable whatever their status: an overloaded node, shards moving, an index
# made read-only for a full disk (every record would hit it: an outage, not poison)
_RETRY_TYPES = ("es_rejected_execution_exception", "circuit_breaking_exception",
                "unavailable_shards_exception", "cluster_block_exception")


class ElasticsearchConfig(SinkConfig):
    """``meta`` of an ``elasticsearch`` sink."""

    hosts: list[SecretUrl] = Field(default_factory=lambda: [SecretUrl("http://127.0.0.1:9200")],
                                   min_length=1)
    index: str = Field(default="analytics-%Y.%m.%d", min_length=1,
                       description="strftime pattern of the record's time (UTC)")
    time_field: str = "timestamp"
    timestamp_key: str | None = "@timestamp"
    pipeline: str | None = None
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: str | None = None
    verify_certs: bool = True
    chunk_size: int = Field(default=500, ge=1)
    max_chunk_bytes: int = Field(default=10_000_000, ge=1024)
    max_request_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)


def _retryable(status: int, error: Any) -> bool:
    kind = error.get("type", "") if isinstance(error, dict) else str(error)
    return status == 429 or status >= 500 or kind in _RETRY_TYPES


@register
class ElasticsearchSink(Sink):
    name = "elasticsearch"
    Config = ElasticsearchConfig
    deduplicates = True
    requires = ("elasticsearch",)
    extra = "elasticsearch"

    def __init__(self, config: ElasticsearchConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._client: Any = None

    def _es(self) -> Any:
        if self._client is None:
            from elasticsearch import Elasticsearch

            cfg = self.cfg
            kw: dict[str, Any] = {"max_retries": 0, "retry_on_status": (),
                                  "retry_on_timeout": False,
                                  "request_timeout": cfg.max_request_s}
            if cfg.api_key is not None:
                key = cfg.api_key.get_secret_value()
                if ":" in key:  # id:key, as Elasticsearch creates it
                    key = base64.b64encode(key.encode()).decode()
                kw["api_key"] = key
            elif cfg.username is not None:
                pw = cfg.password.get_secret_value() if cfg.password else ""
                kw["basic_auth"] = (cfg.username, pw)
            if cfg.ca_certs is not None:
                kw["ca_certs"] = cfg.ca_certs
            if any(h.get_secret_value().startswith("https://") for h in cfg.hosts):
                kw["verify_certs"] = cfg.verify_certs
            self._client = Elasticsearch([h.get_secret_value() for h in cfg.hosts], **kw)
        return self._client

    def open(self) -> None:
        self.health_check(deadline=time.monotonic() + self.cfg.connect_timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- documents ---------------------------------------------------------------
    def _actions(self, batch: Batch) -> tuple[list[dict[str, Any]], dict[str, str]]:
        cfg = self.cfg
        entries = batch.entries() or [("", batch.records)]
        actions: list[dict[str, Any]] = []
        rejected: dict[str, str] = {}
        names: dict[int, str] = {}  # whole second -> index name
        for entry_id, records in entries:
            fallback = entry_seconds(entry_id) if entry_id else None
            for r in records:
                raw = r.data.get(cfg.time_field)
                t = fallback if raw is None else epoch_seconds(raw)
                if t is None:
                    rejected[r.id] = f"{cfg.time_field} {raw!r:.80} is not a time"
                    continue
                second = int(t // 1)
                index = names.get(second)
                if index is None:
                    index = datetime.fromtimestamp(second, UTC).strftime(cfg.index)
                    names[second] = index
                doc = r.data
                if cfg.timestamp_key is not None:
                    doc = dict(doc)
                    doc[cfg.timestamp_key] = (time_text(raw) if isinstance(raw, datetime)
                                              else time_text(datetime.fromtimestamp(t, UTC)))
                try:
                    source = dumps(doc)
                except PermanentError as exc:
                    rejected[r.id] = str(exc)
                    continue
                action = {"_op_type": "index", "_index": index, "_id": r.id, "_source": source}
                if cfg.pipeline is not None:
                    action["pipeline"] = cfg.pipeline
                actions.append(action)
        return actions, rejected

    def _chunks(self, actions: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        out: list[list[dict[str, Any]]] = []
        chunk: list[dict[str, Any]] = []
        size = 0
        for a in actions:
            n = len(a["_source"]) + len(a["_id"]) + len(a["_index"]) + 60
            if chunk and (len(chunk) >= self.cfg.chunk_size
                          or size + n > self.cfg.max_chunk_bytes):
                out.append(chunk)
                chunk, size = [], 0
            chunk.append(a)
            size += n
        if chunk:
            out.append(chunk)
        return out

    # -- writing -----------------------------------------------------------------
    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        self.time_left(deadline)
        if not len(batch):
            return Verdict.OK
        actions, rejected = self._actions(batch)
        retry: dict[str, str] = {}
        for chunk in self._chunks(actions):
            for item in self._bulk(chunk, deadline):
                ((_, info),) = item.items()
                status, error = int(info.get("status", 500)), info.get("error", "")
                why = (f"{status} {error.get('type', '')}: {error.get('reason', '')}"
                       if isinstance(error, dict) else f"{status} {error}")
                (retry if _retryable(status, error) else rejected)[str(info.get("_id"))] = why
        if retry:
            rid, why = next(iter(retry.items()))
            raise RetryableError(f"elasticsearch sink: {len(retry)} document(s) to retry, "
                                 f"e.g. {rid}: {why[:200]}")
        if rejected:
            raise PermanentError.for_records("elasticsearch", rejected, "indexed")
        return Verdict.OK

    def _bulk(self, chunk: list[dict[str, Any]], deadline: float) -> list[dict[str, Any]]:
        """One bulk request of ``chunk``: the items that failed."""
        from elastic_transport import ConnectionError as TransportConnectionError
        from elastic_transport import ConnectionTimeout
        from elasticsearch import ApiError, helpers

        left = min(self.time_left(deadline), self.cfg.max_request_s)
        client = self._es().options(request_timeout=left)
        try:
            _, errors = helpers.bulk(client, chunk, chunk_size=len(chunk) + 1,
                                     max_chunk_bytes=1 << 40, raise_on_error=False,
                                     raise_on_exception=True, stats_only=False)
        except ConnectionTimeout as exc:
            raise RetryableError(f"elasticsearch sink: no answer within {left:.1f} s") from exc
        except TransportConnectionError as exc:
            raise RetryableError(f"elasticsearch sink: cannot reach the server: {exc}") from exc
        except ApiError as exc:
            message = f"elasticsearch sink: bulk request answered {exc.status_code}: {exc}"
            if _retryable(exc.status_code, exc.error):
                raise RetryableError(message) from exc
            raise PermanentError(message) from exc
        return list(errors)  # type: ignore[arg-type]

    def health_check(self, *, deadline: float) -> None:
        from elastic_transport import TransportError
        from elasticsearch import ApiError

        left = min(self.time_left(deadline), self.cfg.max_request_s)
        try:
            self._es().options(request_timeout=left).info()
        except (ApiError, TransportError) as exc:
            raise RetryableError(f"elasticsearch sink health check: {type(exc).__name__}: "
                                 f"{exc}") from exc
