"""``http`` sink: POST each batch as one JSON array to a URL (httpx).

Body: ``[{"id": "<record id>", "record": {...the record's fields...}}, ...]``
with ``Content-Type: application/json``. The receiver deduplicates by
``id``; the sink itself cannot know what the receiver kept, so
``deduplicates = False`` (a receiver that drops known ids makes redelivery
harmless).

Answers: 2xx is success. 408, 429 and 5xx, connection errors and timeouts
are retryable; any other status (3xx are not followed, 4xx) is permanent.
A ``Retry-After`` (seconds or an HTTP date) on 429/503 is respected: when
the wait fits before the deadline the sink waits (interrupted by
``close``) and posts again; otherwise it raises a ``RetryableError`` whose
``retry_after_s`` attribute tells the retry layer how long the server asked
for.

A record that cannot be encoded as JSON is left out of the body and named in
``PermanentError.rejected``. Health: see :meth:`HttpSink.health_check`.

Deadline: every socket operation (connect, send, each read) gets the time
left as its timeout, so a stalled server stops the write. httpx has no
total timeout: a server trickling bytes just fast enough could stretch one
request, bounded by ``max_request_s``.

Headers: ``headers`` are sent as they are; the value of ``auth_header``
(default ``Authorization``) is read from the environment variable named in
``auth_env`` (e.g. ``Bearer ...``; name the variable outside the ``COLLECTOR_``
prefix, which the daemon and the pump check); a variable that is not set is
refused when the config loads (``collector-pump --check`` too). Neither is ever logged; header
values and URLs are secrets in the config (never shown).
"""

from __future__ import annotations

import email.utils
import os
import threading
import time
from typing import Any

from pydantic import Field, SecretStr, field_validator

from collector.common.log import get_logger
from collector.common.redact import SecretUrl, remember

from ._base import Batch, PermanentError, RetryableError, Sink, SinkConfig, Verdict, register
from ._encode import dumps, encode_each

log = get_logger(__name__)


class HttpConfig(SinkConfig):
    """``meta`` of an ``http`` sink."""

    url: SecretUrl = Field(description="http:// or https:// URL the batches are POSTed to")
    headers: dict[str, SecretStr] = Field(default_factory=dict)  # values never logged
    auth_header: str = "Authorization"
    auth_env: str | None = Field(default=None,
                                 description="environment variable holding the auth value")
    verify_tls: bool = True
    tls_ca_file: str | None = None
    max_request_s: float = Field(default=60.0, gt=0, description="cap on one request's time")
    health_url: SecretUrl | None = Field(default=None,
                                         description="GET this for health; else TCP")

    @field_validator("auth_env")
    @classmethod
    def _auth_env_set(cls, value: str | None) -> str | None:
        if value is not None and value not in os.environ:
            raise ValueError(f"the environment variable {value!r} is not set; it must hold "
                             "the value of auth_header (e.g. 'Bearer ...') when the pump starts")
        return value

    @field_validator("url", "health_url")
    @classmethod
    def _scheme(cls, value: SecretUrl | None) -> SecretUrl | None:
        if value is not None and not value.get_secret_value().startswith(
                ("http://", "https://")):
            raise ValueError(f"{str(value)!r} must start with http:// or https://")
        return value


@register
class HttpSink(Sink):
    name = "http"
    Config = HttpConfig
    deduplicates = False
    requires = ("httpx",)
    extra = "http"

    def __init__(self, config: HttpConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._client: Any = None
        self._closing = threading.Event()

    def open(self) -> None:
        import httpx

        if self._client is not None:
            return
        headers = {"Content-Type": "application/json",
                   **{k: v.get_secret_value() for k, v in self.cfg.headers.items()}}
        if self.cfg.auth_env:
            value = os.environ.get(self.cfg.auth_env)
            if value is None:
                raise PermanentError(
                    f"http sink: auth_env names {self.cfg.auth_env!r}, which is not set")
            remember(value, *value.split())  # "Bearer TOKEN": the token alone too
            headers[self.cfg.auth_header] = value
        verify: Any = self.cfg.tls_ca_file or self.cfg.verify_tls
        self._client = httpx.Client(headers=headers, verify=verify, follow_redirects=False,
                                    timeout=self.cfg.max_request_s)
        self._closing.clear()

    def close(self, timeout_s: float = 5.0) -> None:
        self._closing.set()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        self.time_left(deadline)
        if not len(batch):
            return Verdict.OK
        items, rejected = encode_each(batch.records,
                                      lambda r: dumps({"id": r.id, "record": r.data}))
        if items:
            self._post_all(b"[" + b",".join(items) + b"]", deadline)
        if rejected:
            raise PermanentError.for_records("http", rejected, "posted")
        return Verdict.OK

    def _post_all(self, body: bytes, deadline: float) -> None:
        while True:
            retry_after = self._post(body, deadline)
            if retry_after is None:
                return
            if self._closing.wait(retry_after) or self._client is None:
                raise RetryableError("http sink closed while waiting for Retry-After")

    def _post(self, body: bytes, deadline: float) -> float | None:
        """POST once: None on success, or the seconds to wait before posting again."""
        import httpx

        if self._client is None:
            self.open()
        left = min(self.time_left(deadline), self.cfg.max_request_s)
        try:
            resp = self._client.post(self.cfg.url.get_secret_value(), content=body,
                                     timeout=httpx.Timeout(left))
        except httpx.TimeoutException as exc:
            raise RetryableError(f"http sink: no answer within the deadline: "
                                 f"{type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise RetryableError(f"http sink: cannot reach the server: "
                                 f"{type(exc).__name__}: {exc}") from exc
        status = resp.status_code
        if 200 <= status < 300:
            return None
        snippet = resp.text[:200].replace("\n", " ")
        message = f"http sink: server answered {status} {resp.reason_phrase}: {snippet!r}"
        if status in (408, 429) or status >= 500:
            wait = _retry_after(resp.headers.get("Retry-After"))
            if wait is not None and status in (429, 503):
                if time.monotonic() + wait < deadline - 0.05:
                    log.info("Waiting as the server asked (Retry-After).", status=status,
                             retry_after_s=round(wait, 3))
                    return wait
                err = RetryableError(f"{message} (Retry-After {wait:.1f} s is past the deadline)")
                err.retry_after_s = wait  # type: ignore[attr-defined]
                raise err
            raise RetryableError(message)
        raise PermanentError(message)

    def health_check(self, *, deadline: float) -> None:
        """A real request with the write's timeout: GET ``health_url``, or else POST an
        empty batch (``[]``: no record) to ``url``. Healthy on 2xx (and 400/422, a
        receiver refusing the empty batch itself); a timeout, 5xx, 408 or 429 is not."""
        import httpx

        left = min(self.time_left(deadline), self.cfg.max_request_s)
        if self._client is None:
            self.open()
        try:
            if self.cfg.health_url:
                resp = self._client.get(self.cfg.health_url.get_secret_value(),
                                        timeout=httpx.Timeout(left))
            else:
                resp = self._client.post(self.cfg.url.get_secret_value(), content=b"[]",
                                         timeout=httpx.Timeout(left))
        except httpx.TimeoutException as exc:
            raise RetryableError(f"http sink health check: no answer within {left:.1f} s: "
                                 f"{type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise RetryableError(f"http sink health check: cannot connect to the server: "
                                 f"{type(exc).__name__}: {exc}") from exc
        status = resp.status_code
        if not (200 <= status < 300 or (not self.cfg.health_url and status in (400, 422))):
            raise RetryableError(f"http sink health check: the server answered {status}")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
