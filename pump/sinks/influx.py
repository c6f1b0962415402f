"""``influx`` sink: InfluxDB 1.x line protocol, POSTed to ``/write`` with httpx.

Points
------
One point per record in ``measurement``. Tags: the record fields named in
``tags`` (missing or empty ones are left out), and the record id under
``id_key`` when ``id_as: tag`` (the default: every record its own point,
so a redelivery overwrites the same point instead of adding one, and
``deduplicates = True``; each record is a series, which InfluxDB indexes:
for very high volumes use ``id_as: field``, where points of equal tags and
time overwrite one another, InfluxDB's own rule). Fields: ``fields`` (all
other fields of the record when ``null``), typed: ``bool`` ``true/false``,
``int`` ``<n>i`` (64 bits), ``float``, text as a string field, times as
ISO 8601 text in UTC with ``Z``, maps and lists as JSON text; ``None``
is left out. Timestamp: the record's ``time_field`` (Unix seconds or ms,
ISO 8601, or a msgpack timestamp with its nanoseconds) in ``precision``; a
record without one is placed at the time Redis added its stream entry, which
redelivery keeps.

Rejected alone (``PermanentError.rejected``, the others written): a time
that is not one, an integer beyond 64 bits, a float that is not finite, a
string field longer than 64 KiB, a record with no field; and what the
server refuses by name: a line it could not parse (it quotes the line), and
the points of a field type conflict (it names the field and the type it
already has, so the points whose value has another type are the ones). A
400 the sink cannot attribute to points is permanent for the batch (the
worker finds the records by halves).

Requests: at most ``max_points_per_request`` lines (InfluxDB's advice is
5,000) and ``max_request_bytes`` each (the server's ``max-body-size`` is
25 MB). 408, 429, 5xx, connection errors and timeouts are retryable; 404
``database not found`` is an outage (``OutageError``: the pump holds the
batch; with ``create_database`` the database is created again first);
401/403 and other 4xx are permanent. Each request gets the time left as
httpx's per-operation timeout, capped by ``max_request_s``.

Auth: ``username`` and ``password`` (a secret, never logged) as HTTP basic
auth. Health check: an empty ``/write`` (the write path: database, auth,
retention policy; nothing is stored).
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from collector.common.redact import SecretUrl

from ._base import (
    Batch,
    OutageError,
    PermanentError,
    Record,
    RetryableError,
    Sink,
    SinkConfig,
    Verdict,
    register,
)
from ._encode import dumps
from ._time import entry_seconds, epoch_seconds
from ._values import Timestamp, time_text

_PRECISION = {"ns": ("n", 1_000_000_000), "us": ("u", 1_000_000), "ms": ("ms", 1000),
              "s": ("s", 1)}
_MAX_STRING = 64 * 1024
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
_CONFLICT = re.compile(r'input field \\?"(?P<field>.+?)\\?" on measurement .+? is type '
                       r'(?P<input>\w+), already exists as type (?P<have>\w+)')
_DROPPED = re.compile(r"dropped=(\d+)")


def _escape_key(text: str) -> str:  # measurement (no '='), tag keys and values, field keys
    # InfluxDB 1.x unescapes only these (a backslash is kept as it is)
    return (text.replace(",", r"\,").replace("=", r"\=")
            .replace(" ", r"\ ").replace("\n", r"\n"))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxConfig(SinkConfig):
    """``meta`` of an ``influx`` sink."""

    url: SecretUrl = Field(default=SecretUrl("http://127.0.0.1:8086"),
                           description="http:// or https:// base URL of InfluxDB 1.x")
    database: str = Field(default="analytics", min_length=1)
    retention_policy: str | None = None
    create_database: bool = False
    precision: Literal["ns", "us", "ms", "s"] = "ns"
    username: str | None = None
    password: SecretStr | None = None
    measurement: str = Field(default="analytics", min_length=1)
    tags: list[str] = Field(default_factory=lambda: ["username", "effect"])
    fields: list[str] | None = Field(default=None, description="null: every other field")
    id_key: str = Field(default="record_id", min_length=1)
    id_as: Literal["tag", "field"] = "tag"
    time_field: str = "timestamp"
    max_points_per_request: int = Field(default=5000, ge=1)
    max_request_bytes: int = Field(default=10_000_000, ge=1024)
    max_request_s: float = Field(default=60.0, gt=0)
    verify_tls: bool = True
    tls_ca_file: str | None = None

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: SecretUrl) -> SecretUrl:
        if not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError(f"{str(value)!r} must start with http:// or https://")
        return value


class _Bad(ValueError):
    """A record that cannot be a point (the message says why)."""


@register
class InfluxSink(Sink):
    name = "influx"
    Config = InfluxConfig
    requires = ("httpx",)
    extra = "http"

    def __init__(self, config: InfluxConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._client: Any = None
        self._unit = _PRECISION[config.precision][1]
        self._prefix = _escape_key(config.measurement).replace(r"\=", "=")
        self._skip = {*config.tags, config.time_field}
        params = {"db": config.database, "precision": _PRECISION[config.precision][0]}
        if config.retention_policy:
            params["rp"] = config.retention_policy
        self._params = params

    @property
    def deduplicates(self) -> bool:  # type: ignore[override]
        """With the id as a tag a redelivered record overwrites its own point."""
        return self.cfg.id_as == "tag"

    # -- points ------------------------------------------------------------------
    def _timestamp(self, value: Any, fallback: float | None) -> int:
        if value is None:
            if fallback is None:
                raise _Bad(f"no {self.cfg.time_field} and no stream entry time")
            return round(fallback * self._unit)
        if isinstance(value, datetime):
            seconds, ns = Timestamp.from_datetime(value).unix()
            return seconds * self._unit + ns * self._unit // 1_000_000_000
        t = epoch_seconds(value)
        if t is None:
            raise _Bad(f"{self.cfg.time_field} {value!r:.80} is not a time")
        return t * self._unit if isinstance(t, int) else round(t * self._unit)

    @staticmethod
    def _field(key: str, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            if not _INT64[0] <= value <= _INT64[1]:
                raise _Bad(f"{key} {value} does not fit in 64 bits")
            text = f"{value}i"
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _Bad(f"{key} {value} is not a finite number")
            text = repr(value)
        else:
            if isinstance(value, datetime):
                value = time_text(value)
            elif isinstance(value, bytes | bytearray):
                value = bytes(value).decode("utf-8", "backslashreplace")
            elif not isinstance(value, str):
                value = dumps(value).decode()
            if len(value) > _MAX_STRING:
                raise _Bad(f"{key} is {len(value)} characters, more than InfluxDB's "
                           f"{_MAX_STRING} for a string field")
            text = _quote(value)
        return f"{_escape_key(key)}={text}"

    def _line(self, record: Record, fallback: float | None) -> str:
        cfg, data = self.cfg, record.data
        head = [self._prefix]
        for tag in cfg.tags:
            value = data.get(tag)
            if value is not None and value != "":
                head.append(f"{_escape_key(tag)}={_escape_key(str(value))}")
        if cfg.id_as == "tag":
            head.append(f"{_escape_key(cfg.id_key)}={_escape_key(record.id)}")
        names = cfg.fields if cfg.fields is not None else [
            k for k in data if k not in self._skip]
        fields = [f for f in (self._field(str(k), data.get(k)) for k in names) if f]
        if cfg.id_as == "field":
            fields.append(f"{_escape_key(cfg.id_key)}={_quote(record.id)}")
        if not fields:
            raise _Bad("no field to store (InfluxDB needs at least one)")
        ts = self._timestamp(data.get(cfg.time_field), fallback)
        return f"{','.join(head)} {','.join(fields)} {ts}"

    def _lines(self, batch: Batch) -> tuple[list[tuple[Record, str]], dict[str, str]]:
        entries = batch.entries() or [("", batch.records)]
        out: list[tuple[Record, str]] = []
        rejected: dict[str, str] = {}
        for entry_id, records in entries:
            fallback = entry_seconds(entry_id) if entry_id else None
            for r in records:
                try:
                    out.append((r, self._line(r, fallback)))
                except (_Bad, PermanentError) as exc:
                    rejected[r.id] = str(exc)
        return out, rejected

    # -- requests ------------------------------------------------------------------
    def open(self) -> None:
        import httpx

        if self._client is None:
            auth = None
            if self.cfg.username is not None:
                pw = self.cfg.password.get_secret_value() if self.cfg.password else ""
                auth = httpx.BasicAuth(self.cfg.username, pw)
            self._client = httpx.Client(base_url=self.cfg.url.get_secret_value(), auth=auth,
                                        verify=self.cfg.tls_ca_file or self.cfg.verify_tls,
                                        timeout=self.cfg.max_request_s)
        if self.cfg.create_database:
            self._create_database(time.monotonic() + self.cfg.max_request_s)

    def close(self, timeout_s: float = 5.0) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _request(self, path: str, params: dict[str, str], body: bytes,
                 deadline: float) -> Any:
        import httpx

        if self._client is None:
            self.open()
        left = min(self.time_left(deadline), self.cfg.max_request_s)
        try:
            return self._client.post(path, params=params, content=body,
                                     timeout=httpx.Timeout(left))
        except httpx.TimeoutException as exc:
            raise RetryableError(f"influx sink: no answer within the deadline: "
                                 f"{type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise RetryableError(f"influx sink: cannot reach the server: "
                                 f"{type(exc).__name__}: {exc}") from exc

    def _create_database(self, deadline: float) -> None:
        q = 'CREATE DATABASE "' + self.cfg.database.replace('"', '\\"') + '"'
        resp = self._request("/query", {"q": q}, b"", deadline)
        if resp.status_code != 200 or "error" in resp.text:
            raise self._error(resp, [])

    def _error(self, resp: Any, sent: list[tuple[Record, str]]) -> Exception:
        status = resp.status_code
        try:
            reason = str(resp.json().get("error", resp.text))
        except ValueError:
            reason = resp.text
        message = f"influx sink: server answered {status}: {reason[:300]!r}"
        if status in (408, 429) or status >= 500:
            return RetryableError(message)
        if status == 404 and "database not found" in reason:
            return OutageError(message)
        rejected = self._attribute(reason, sent) if status == 400 else {}
        return PermanentError(message, rejected=rejected)

    def _attribute(self, reason: str, sent: list[tuple[Record, str]]) -> dict[str, str]:
        """The records a 400 names (module docstring); {} unless it names every dropped one."""
        rejected: dict[str, str] = {}
        if "unable to parse '" in reason:
            for r, line in sent:
                if f"unable to parse '{line}'" in reason:
                    rejected[r.id] = f"InfluxDB could not parse its line: {reason[:200]}"
        m = _CONFLICT.search(reason)
        if m:
            field, have = m["field"], m["have"]
            for r, _ in sent:
                value = r.id if field == self.cfg.id_key else r.data.get(field)
                typ = _kind(value)
                if typ is not None and typ != have:
                    rejected[r.id] = (f"field {field} is {typ} here and {have} in InfluxDB "
                                      "(a field type conflict)")
        dropped = _DROPPED.search(reason)
        parse_errors = reason.count("unable to parse '")
        if not rejected or dropped is None or (
                int(dropped[1]) + parse_errors != len(rejected)):
            return {}
        return rejected

    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        self.time_left(deadline)
        if not len(batch):
            return Verdict.OK
        lines, rejected = self._lines(batch)
        refused: list[PermanentError] = []
        start = 0
        while start < len(lines):
            end, size = start, 0
            while (end < len(lines) and end - start < self.cfg.max_points_per_request
                   and (size == 0 or size + len(lines[end][1]) + 1 <= self.cfg.max_request_bytes)):
                size += len(lines[end][1].encode()) + 1
                end += 1
            chunk = lines[start:end]
            start = end
            body = "\n".join(line for _, line in chunk).encode()
            resp = self._request("/write", self._params, body, deadline)
            if resp.status_code == 204:
                continue
            err = self._error(resp, chunk)
            if isinstance(err, OutageError) and self.cfg.create_database:
                self._create_database(deadline)
            if isinstance(err, PermanentError) and err.rejected:
                refused.append(err)  # the chunk's other points are written
                continue
            raise err
        for err in refused:
            rejected.update(err.rejected)
        if rejected:
            raise PermanentError.for_records("influx", rejected, "written")
        return Verdict.OK

    def health_check(self, *, deadline: float) -> None:
        resp = self._request("/write", self._params, b"", deadline)
        if resp.status_code != 204:
            err = self._error(resp, [])
            raise RetryableError(f"influx sink health check: {err}")


def _kind(value: Any) -> str | None:
    """InfluxDB's name of the field type ``value`` is written as (None: not written)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"
