"""What every framework's middleware shares: options, the record, ``add_fields``, safe emit.

A middleware builds one plain ``dict`` per request from the framework's own
request and response objects and hands it to :class:`Recorder.emit`, which
merges the fields the app added (:func:`add_fields`), applies the field
selection and the custom builder, and calls ``Analytics.record_hit``. Nothing
in here raises into the app: an encoding error, an oversize record, a
failing hook or a full ring is counted (:meth:`Recorder.stats`) and logged
at most once a minute per kind.

Fields (``DEFAULT_FIELDS``; ``fields=`` picks a subset or adds ``pid``)::

    timestamp       float, seconds since the epoch when the request arrived
    method          "GET", "POST", ...; "WEBSOCKET" for an ASGI websocket
    route           the route template the framework matched ("/items/{item_id}",
                    "/orders/<int:order_id>"), None when no route matched or
                    the framework does not say: bounded cardinality
    path            the raw path (unbounded: leave it out of metrics labels)
    status          the HTTP status sent (101 for an accepted websocket,
                    403 for one refused, 500 when the app raised before any response)
    duration_us     int, from arrival to the last byte handed to the server
    request_bytes   request body bytes (Content-Length, or counted when chunked)
    response_bytes  response body bytes sent
    client_addr     the peer address, or the client from ``client_ip_header``
                    when that header is configured and the peer is a trusted proxy
    user_id         what the ``user_id`` hook returned (None without one)
    request_id      the ``request_id_header`` value (cut to 128 characters)
    pid             (not in the defaults) the worker process id

Fields the app adds for the current request with :func:`add_fields` come
last and win over these.
"""

from __future__ import annotations

import ipaddress
import os
import random
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..common.log import RateLimited, get_logger
from ..config import CollectorConfig, ConfigError, load_config

if TYPE_CHECKING:
    from .._client import Analytics

log = get_logger("collector.integrations")

DEFAULT_FIELDS: tuple[str, ...] = (
    "timestamp", "method", "route", "path", "status", "duration_us", "request_bytes",
    "response_bytes", "client_addr", "user_id", "request_id",
)
OPTIONAL_FIELDS: tuple[str, ...] = ("pid",)
ALL_FIELDS = DEFAULT_FIELDS + OPTIONAL_FIELDS

MAX_REQUEST_ID_CHARS = 128
_LOG_EVERY_S = 60.0

RecordBuilder = Callable[[dict[str, Any], Any], "Mapping[str, Any] | None"]
"""``builder(record, request)``: the record to send, or ``None`` to send nothing.

``request`` is the framework's own request object: the WSGI ``environ``,
the ASGI ``scope`` or Django's ``HttpRequest``."""

# -- fields the app adds for the current request --------------------------------
_CURRENT: ContextVar[dict[str, Any] | None] = ContextVar("collector_request_fields",
                                                          default=None)


def add_fields(**fields: Any) -> bool:
    """Add ``fields`` to the record of the request being handled; ``False`` outside one.

    The middleware puts a fresh dict in a ``ContextVar`` when a request
    starts, so this works from the handler's thread (sync workers, gthread,
    a Django or Starlette sync view run in a thread pool, which copy the
    context), its greenlet (gevent) and its asyncio task, including tasks
    the handler starts, since they copy the context and share the dict. A
    thread the app starts itself (``threading.Thread``) begins with an
    empty context: run its target under ``contextvars.copy_context().run``.
    Values must be encodable by ``record_hit`` (see ``collector._encode``);
    one that is not costs the request's record (counted), never the request.
    """
    current = _CURRENT.get()
    if current is None:
        return False
    current.update(fields)
    return True


def current_fields() -> dict[str, Any] | None:
    """The fields added so far for the current request (the live dict), or ``None``."""
    return _CURRENT.get()


# -- the shared client ----------------------------------------------------------
_default_lock = threading.Lock()
_default: Analytics | None = None


def default_analytics() -> Analytics:
    """This process's shared ``Analytics.from_config()`` (``$COLLECTOR_CONFIG``), made on first use.

    Made lazily, so a gunicorn master that imports the app (``--preload``)
    opens no ring, and a test that points ``COLLECTOR_CONFIG`` at a private
    pipeline before the first request is honoured.
    """
    global _default
    client = _default
    if client is None:
        with _default_lock:
            if _default is None:
                from .._client import Analytics

                _default = Analytics.from_config()
            client = _default
    return client


def _shared_record_hit(record: Mapping[str, Any]) -> bool:
    # looked up per call, so a reset (tests) takes effect in every middleware
    client = _default
    if client is None:
        client = default_analytics()
    return client.record_hit(record)


def reset_default_analytics() -> None:
    """Stop and forget the shared client; the next request makes a new one (tests)."""
    global _default
    with _default_lock:
        client, _default = _default, None
    if client is not None:
        client.stop()


def refuse_block_policy(cfg: CollectorConfig, where: str) -> None:
    """Raise :class:`ConfigError` for ``full_policy: block`` where it would stall an event loop."""
    if cfg.full_policy == "block":
        raise ConfigError(
            f"full_policy: block cannot be used {where}: while the ring is full, "
            f"record_hit sleeps up to block_timeout_ms ({cfg.block_timeout_ms:g} ms) "
            "on the event loop's own thread, which stalls every request of the worker. "
            "Use full_policy: drop (the default; drops are counted in the ring header)."
        )


# -- options --------------------------------------------------------------------
@dataclass(frozen=True)
class HttpRecordOptions:
    """What a middleware records. Every keyword of the middlewares' constructors.

    ``fields``            which fields to send (``DEFAULT_FIELDS``; ``ALL_FIELDS``
                          adds ``pid``)
    ``skip_paths``        paths recorded never (health checks); an entry ending
                          in ``*`` is a prefix (``"/static/*"``)
    ``sample_rate``       the fraction of requests recorded, 0..1 (decided when
                          the request arrives, at random)
    ``record_builder``    ``builder(record, request) -> record | None``, run
                          last; see :data:`RecordBuilder`
    ``user_id``           ``hook(request) -> id | None`` (``request`` as for the
                          builder); an exception counts as ``hook_errors``
    ``client_ip_header``  e.g. ``"X-Forwarded-For"`` or ``"X-Real-IP"``: only
                          then, and only when the peer is in ``trusted_proxies``,
                          is the client taken from that header (the entry
                          ``trusted_hops`` from the right of a comma list)
    ``trusted_proxies``   networks whose peers may set ``client_ip_header``
                          (default: loopback)
    ``trusted_hops``      proxies in front of the app that append to the header
    ``request_id_header`` header copied into ``request_id`` (None: not read)
    ``extra``             constant fields added to every record
    """

    fields: tuple[str, ...] = DEFAULT_FIELDS
    skip_paths: tuple[str, ...] = ()
    sample_rate: float = 1.0
    record_builder: RecordBuilder | None = None
    user_id: Callable[[Any], Any] | None = None
    client_ip_header: str | None = None
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    trusted_hops: int = 1
    request_id_header: str | None = "X-Request-ID"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fields = tuple(self.fields)
        unknown = [f for f in fields if f not in ALL_FIELDS]
        if unknown:
            raise ValueError(f"unknown record fields {unknown}; known: {list(ALL_FIELDS)}")
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "skip_paths", tuple(self.skip_paths))
        object.__setattr__(self, "trusted_proxies", tuple(self.trusted_proxies))
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1, got {self.sample_rate}")
        if self.trusted_hops < 1:
            raise ValueError(f"trusted_hops must be at least 1, got {self.trusted_hops}")
        for net in self.trusted_proxies:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad one

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> HttpRecordOptions:
        known = cls.__dataclass_fields__
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"unknown middleware options {unknown}; known: {sorted(known)}")
        return cls(**options)


@lru_cache(maxsize=256)
def _in_networks(addr: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


@lru_cache(maxsize=4096)
def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class Recorder:
    """One middleware's options, client and counters; ``emit`` never raises.

    Framework modules call :meth:`wants` when a request arrives and
    :meth:`emit` with the finished record; :meth:`client_addr` and
    :meth:`request_id` apply the header rules.
    """

    def __init__(self, analytics: Analytics | None, options: HttpRecordOptions) -> None:
        self.options = options
        self._analytics = analytics
        self._record_hit: Callable[[Mapping[str, Any]], bool] = (
            analytics.record_hit if analytics is not None else _shared_record_hit)
        keep = options.fields
        self.keep: tuple[str, ...] | None = None if keep == DEFAULT_FIELDS else keep
        self.want_pid = "pid" in keep
        self.want_user = "user_id" in keep and options.user_id is not None
        self.user_id = options.user_id
        self.builder = options.record_builder
        self.extra = dict(options.extra) or None
        exact = {p for p in options.skip_paths if not p.endswith("*")}
        self._skip_exact = frozenset(exact)
        self._skip_prefix = tuple(p[:-1] for p in options.skip_paths if p.endswith("*"))
        self._rate = options.sample_rate
        # nothing to decide per request: the middlewares skip wants()
        self.record_all = not options.skip_paths and options.sample_rate >= 1.0
        self._random = random.random
        self.ip_header = options.client_ip_header
        self._proxies = options.trusted_proxies
        self._hops = options.trusted_hops
        self.id_header = options.request_id_header
        self._lock = threading.Lock()
        self._counts = {"dropped": 0, "errors": 0, "hook_errors": 0}
        self._limiter = RateLimited(_LOG_EVERY_S, log)

    @property
    def analytics(self) -> Analytics:
        return self._analytics if self._analytics is not None else default_analytics()

    def wants(self, path: str) -> bool:
        """Record this request? (skip paths, then sampling)"""
        if path in self._skip_exact:
            return False
        if self._skip_prefix and path.startswith(self._skip_prefix):
            return False
        return self._rate >= 1.0 or self._random() < self._rate

    def client_addr(self, peer: str | None, header_value: str | None) -> str | None:
        if header_value is None or peer is None or not _in_networks(peer, self._proxies):
            return peer
        parts = header_value.split(",")
        candidate = parts[max(0, len(parts) - self._hops)].strip()
        return candidate if _valid_ip(candidate) else peer

    @staticmethod
    def request_id(value: str | None) -> str | None:
        if value is None or len(value) <= MAX_REQUEST_ID_CHARS:
            return value
        return value[:MAX_REQUEST_ID_CHARS]

    def lookup_user(self, request: Any) -> Any:
        try:
            return self.user_id(request)  # type: ignore[misc]
        except Exception as exc:
            self.count("hook_errors", exc, "The user_id hook raised; the record has no "
                       "user_id.")
            return None

    def emit(self, record: dict[str, Any], added: dict[str, Any] | None, request: Any) -> None:
        """Finish ``record`` (added fields, selection, builder) and send it; never raises."""
        try:
            if self.want_pid:
                record["pid"] = os.getpid()
            if self.keep is not None:
                record = {k: record[k] for k in self.keep if k in record}
            if self.extra:
                record.update(self.extra)
            if added:
                record.update(added)
            if self.builder is not None:
                built = self.builder(record, request)
                if built is None:
                    return
                record = built if type(built) is dict else dict(built)
            if not self._record_hit(record):
                self.count("dropped", None, "A request's record was dropped (ring full, no "
                           "ring, or the client stopped); the request is unaffected.")
        except Exception as exc:
            self.count("errors", exc, "A request's record could not be sent; the request "
                       "is unaffected.")

    def count(self, kind: str, exc: BaseException | None, what: str) -> None:
        """Count one ``kind`` of failure; log it at most once a minute per kind."""
        with self._lock:
            self._counts[kind] += 1
            total = self._counts[kind]
        self._limiter.warning(kind, what, kind=kind, total=total, error=exc)

    def build_failed(self, exc: BaseException) -> None:
        """The middleware could not build the record (counted as ``errors``)."""
        self.count("errors", exc, "A request's record could not be built; the request "
                   "is unaffected.")

    def stats(self) -> dict[str, int]:
        """Counts in this process: ``dropped`` (record_hit said no), ``errors``, ``hook_errors``."""
        with self._lock:
            return dict(self._counts)


def options_from(options: Mapping[str, Any]) -> HttpRecordOptions:
    """Options from keyword arguments (a middleware's ``**options``)."""
    return HttpRecordOptions.from_kwargs(options)


def check_policy(analytics: Analytics | None, where: str) -> None:
    """``refuse_block_policy`` for the client a middleware will use (its config, or
    ``$COLLECTOR_CONFIG``'s for the lazily made shared client)."""
    if analytics is not None:
        refuse_block_policy(analytics.config, where)
        return
    try:
        cfg = load_config(os.environ.get("COLLECTOR_CONFIG") or None)
    except ConfigError:
        return  # reported when the shared client is made, on the first request
    refuse_block_policy(cfg, where)


