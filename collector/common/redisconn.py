"""One way to open a Redis connection, shared by ``collector-daemon`` and ``collector-pump``.

Accepts ``redis://host:port/db``, ``rediss://`` (TLS; certificate options as
URL query parameters, e.g. ``?ssl_cert_reqs=required&ssl_ca_certs=/path``)
and ``unix:///path/to/redis.sock?db=0``, and a Redis Cluster as
``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` for TLS,
the same query parameters): any subset of the cluster's nodes as seeds,
redis-py's :class:`redis.cluster.RedisCluster` on top, which follows MOVED
and ASK redirections itself and re-reads the slot map after a connection
error (a failover); its own retries are off as for one node. A
Sentinel-managed primary is
``redis+sentinel://host:port[,host:port...]/<service>[/db]`` (the
sentinels; ``rediss+sentinel://`` for TLS to the data nodes; the URL's user
and password are the data nodes', ``?sentinel_password=`` the sentinels'):
redis-py's :class:`redis.sentinel.Sentinel` asks the sentinels for the
current primary on every new connection, so after a failover the next
attempt reaches the promoted replica. The ACL user name and password come
from the URL or, winning over it, from the arguments (config keys
``redis_username`` / ``redis_password`` or ``COLLECTOR_REDIS_PASSWORD``).

Passwords are never logged: log :func:`collector.common.redact.redact_url`
output, never the URL itself.

:func:`wait_for_redis` is how both services start: up to
``startup_redis_wait_s`` for Redis to answer, at once ``False`` when it
refuses the credentials (both then exit 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

from .cluster import LazyCluster
from .log import get_logger
from .redact import redact_url

if TYPE_CHECKING:
    from .service import ServiceSettings

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES)

#: What :func:`connect` returns: one node's client or a cluster's.
RedisClient = redis.Redis | LazyCluster

_log = get_logger(__name__)


def connect(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    timeout_s: float = 5.0,
    connect_timeout_s: float | None = None,
    client_name: str | None = None,
    **kwargs: Any,
) -> RedisClient:
    """A ``redis.Redis`` for ``url`` with socket timeouts (no connection is made yet);
    a :class:`~collector.common.cluster.LazyCluster` for a ``redis+cluster://`` URL.

    ``timeout_s`` bounds every command's socket read/write;
    ``connect_timeout_s`` (default: ``timeout_s``) bounds connecting.

    redis-py's own retries are off (it would otherwise retry a failed
    command up to 10 times with growing sleeps, blocking the caller): the
    caller owns retries and backoff. Pass ``retry=`` to change that.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(
            f"Redis URL {redact_url(url)!r} has scheme {scheme!r}: it must be "
            "redis://, rediss:// (TLS), unix://, redis+cluster://, rediss+cluster://, "
            "redis+sentinel:// or rediss+sentinel://"
        )
    if timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s} must be positive")
    opts: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": connect_timeout_s or timeout_s,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 0),
    }
    if scheme != "unix":
        opts["socket_keepalive"] = True
    if client_name:
        opts["client_name"] = client_name
    opts.update(kwargs)
    if scheme in CLUSTER_SCHEMES:
        return _cluster(url, opts, username, password)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel(url, opts, username, password)
    client = redis.Redis.from_url(url, **opts)
    # from_url lets the URL's credentials win over keyword arguments; ours win.
    creds = {k: v for k, v in (("username", username), ("password", password)) if v}
    if creds:
        client.connection_pool.connection_kwargs.update(creds)
    return client


def is_sentinel(url: str) -> bool:
    """True for a ``redis+sentinel://`` or ``rediss+sentinel://`` URL."""
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def is_cluster(url: str) -> bool:
    """True for a ``redis+cluster://`` or ``rediss+cluster://`` URL."""
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` seeds of a cluster or sentinel URL (port 6379, or 26379
    for a sentinel, when none is given)."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    seeds = []
    for item in hosts.split(","):
        item = item.strip()
        if item.startswith("["):  # [v6 address]:port
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = item.partition(":")
        try:
            default = 26379 if urlsplit(url).scheme in SENTINEL_SCHEMES else 6379
            seeds.append((host or "localhost", int(port or default)))
        except ValueError:
            raise ValueError(f"Redis URL {redact_url(url)!r}: bad seed {item!r} "
                             "(host:port)") from None
    return seeds


def _cluster(url: str, opts: dict[str, Any], username: str | None,
             password: str | None) -> LazyCluster:
    seeds = cluster_seeds(url)
    kw = _single_url_options(url, urlsplit(url).path)
    if int(kw.pop("db", 0) or 0) != 0:
        raise ValueError(f"Redis URL {redact_url(url)!r}: a cluster has database 0 only")
    kw.update(opts)
    kw.pop("retry", None)  # RedisCluster takes its own retry (below), not its nodes'
    kw.pop("retry_on_timeout", None)
    if username:
        kw["username"] = username
    if password:
        kw["password"] = password
    nodes = [ClusterNode(h, p) for h, p in seeds]
    return LazyCluster(lambda: RedisCluster(startup_nodes=nodes, retry=Retry(NoBackoff(), 0),
                                            **kw))


def _single_url_options(url: str, path: str = "") -> dict[str, Any]:
    """redis-py's options for a cluster or sentinel URL as if it named its first seed."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    base = "rediss" if parts.scheme.startswith("rediss") else "redis"
    host, port = cluster_seeds(url)[0]
    single = f"{base}://{userinfo + '@' if userinfo else ''}{host}:{port}{path}"
    if parts.query:
        single += f"?{parts.query}"
    kw: dict[str, Any] = parse_url(single)
    for name in ("host", "port"):
        kw.pop(name, None)
    return kw


def _sentinel(url: str, opts: dict[str, Any], username: str | None,
              password: str | None) -> redis.Redis:
    parts = urlsplit(url)
    service, _, db = parts.path.strip("/").partition("/")
    if not service:
        raise ValueError(f"Redis URL {redact_url(url)!r}: name the primary's service "
                         "after the sentinels: redis+sentinel://host:port/<service>[/db]")
    query = dict(parse_qsl(parts.query))
    sentinel_password = query.pop("sentinel_password", None)
    sentinel_username = query.pop("sentinel_username", None)
    rest = urlunsplit(("", "", "", urlencode(query), ""))
    kw = _single_url_options(url.split("?")[0] + rest, f"/{db or 0}")
    if kw.pop("connection_class", None) is not None and parts.scheme.startswith("rediss"):
        kw["ssl"] = True  # the sentinel pool picks its own SSL connection class
    kw.update(opts)
    if username:
        kw["username"] = username
    if password:
        kw["password"] = password
    sentinel_kw = {k: v for k, v in opts.items() if k.startswith("socket_")}
    sentinel_kw["retry"] = opts.get("retry")
    if sentinel_password:
        sentinel_kw["password"] = sentinel_password
    if sentinel_username:
        sentinel_kw["username"] = sentinel_username
    sentinel = Sentinel(cluster_seeds(url), sentinel_kwargs=sentinel_kw)
    return sentinel.master_for(service, **kw)


def connect_from_config(cfg: ServiceSettings, *, timeout_s: float | None = None,
                        client_name: str | None = None, **kwargs: Any) -> RedisClient:
    """:func:`connect` with the URL, credentials and timeout of either service's config."""
    return connect(
        cfg.effective_redis_url(),
        username=cfg.redis_username,
        password=cfg.redis_password_value(),
        timeout_s=timeout_s or cfg.redis_timeout_s,
        client_name=client_name,
        **kwargs,
    )



def wait_for_redis(client: RedisClient, cfg: ServiceSettings,
                   stopping: Callable[[], bool]) -> bool:
    """True once Redis answers a PING; False on refused credentials, timeout or a stop.

    Waits up to ``cfg.startup_redis_wait_s``, logging once while it waits;
    refused credentials end the wait at once (retrying would not help).
    """
    url = cfg.redacted_redis_url()
    deadline = time.monotonic() + cfg.startup_redis_wait_s
    delay = 0.05
    last: BaseException | None = None
    logged = False
    while not stopping():
        try:
            client.ping()
            _log.info("Redis is reachable.", url=url)
            return True
        except (redis.exceptions.AuthenticationError,
                redis.exceptions.NoPermissionError) as exc:
            _log.error("Redis refused the credentials; check redis_username and "
                       "redis_password (or the password in redis_url); exiting.", url=url,
                       error=str(exc))
            return False
        except (redis.RedisError, OSError) as exc:
            last = exc
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not logged:
            logged = True
            _log.warning("Redis is not reachable yet; waiting.", url=url,
                         startup_redis_wait_s=cfg.startup_redis_wait_s, error=str(last))
        time.sleep(min(delay, left))
        delay = min(delay * 2, 1.0)
    if stopping():
        return False
    _log.error(f"Redis at {url} is unreachable after startup_redis_wait_s="
               f"{cfg.startup_redis_wait_s}s; exiting.", url=url, error=str(last))
    return False
