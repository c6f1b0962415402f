"""The keys ``collector-daemon`` and ``collector-pump`` share, spelled and checked once.

:class:`ServiceSettings` is the base of ``collector.config.CollectorConfig``
and ``pump.config.PumpConfig``: Redis (URL, credentials, timeout, stream
key and shards), retry backoff, shutdown, the health address and logging.
A service overrides a default by redeclaring the key (the daemon serves
health on 7071, the pump on 7070).
"""

from __future__ import annotations

import ipaddress
import warnings
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator

from .log import LogFormat, LogLevel
from .redact import SecretUrl, redact_dsn
from .settings import ConfigWarning, HostPort, Settings
from .stream import DEFAULT_STREAM_KEY, shard_keys

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
REDIS_SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES)


def _empty_is_none(v: Any) -> Any:
    if isinstance(v, str) and v == "":
        return None
    if isinstance(v, SecretStr) and v.get_secret_value() == "":
        return None
    return v


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (a host name may be anything: False)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may be anything
        return False


def _redis_scheme(v: SecretUrl) -> SecretUrl:
    parts = urlsplit(v.get_secret_value())
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError("must be a redis://, rediss://, unix://, redis+cluster://, "
                         "rediss+cluster://, redis+sentinel:// or rediss+sentinel:// URL, "
                         f"got scheme {parts.scheme!r}")
    if parts.scheme in SENTINEL_SCHEMES and not parts.path.strip("/"):
        raise ValueError("a sentinel URL names the primary's service after the sentinels: "
                         "redis+sentinel://host:port[,host:port]/<service>[/db]")
    if parts.scheme in CLUSTER_SCHEMES or parts.scheme in SENTINEL_SCHEMES:
        for seed in parts.netloc.rpartition("@")[2].split(","):
            port = seed.rpartition(":")[2] if ":" in seed else "6379"
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"cluster seed {seed!r} must be host:port, a port 1-65535")
    else:
        parts.port  # noqa: B018 - raises ValueError for a port out of range, as redis-py would
    return v


RedisUrl = Annotated[SecretUrl, AfterValidator(_redis_scheme)]


class ServiceSettings(Settings):
    """Keys of both services (``configs/collector.yaml`` and ``configs/pump.yaml``)."""

    redis_url: Annotated[RedisUrl | None, BeforeValidator(_empty_is_none)] = None
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_timeout_s: float = Field(default=5.0, gt=0, le=300)
    startup_redis_wait_s: float = Field(default=30.0, ge=0)
    stream_key: str = Field(default=DEFAULT_STREAM_KEY, min_length=1)
    stream_shards: int = Field(default=1, ge=1, le=1024)
    retry_initial_ms: float = Field(default=50.0, gt=0)
    retry_max_ms: float = Field(default=5000.0, gt=0)
    shutdown_timeout_s: float = Field(default=10.0, ge=0, le=3600)
    health_address: HostPort = "127.0.0.1:7071"
    health_allow_remote: bool = False
    log_format: LogFormat = "kv"
    log_level: LogLevel = "info"

    @model_validator(mode="after")
    def _health_local(self) -> ServiceSettings:
        host = self.health_host_port[0]
        if is_loopback(host):
            return self
        if not self.health_allow_remote:
            raise ValueError(
                f"health_address {self.health_address!r} is not a loopback address; /healthz, "
                "/readyz and /metrics carry no authentication: set health_allow_remote: true "
                "to serve them on other interfaces anyway")
        warnings.warn(ConfigWarning("health_address", (
            f"{self.health_address} serves /healthz, /readyz and /metrics, which carry no "
            "authentication, beyond this machine (health_allow_remote: true)")), stacklevel=2)
        return self

    @model_validator(mode="after")
    def _retry_order(self) -> ServiceSettings:
        if self.retry_max_ms < self.retry_initial_ms:
            raise ValueError(f"retry_max_ms ({self.retry_max_ms:g}) must be >= "
                             f"retry_initial_ms ({self.retry_initial_ms:g})")
        return self

    def effective_redis_url(self) -> str:
        """The URL to connect to (with its password: never log it)."""
        raise NotImplementedError

    def redacted_redis_url(self) -> str:
        return redact_dsn(self.effective_redis_url())

    def redis_password_value(self) -> str | None:
        return self.redis_password.get_secret_value() if self.redis_password else None

    def cluster(self) -> bool:
        """True when ``redis_url`` names a Redis Cluster (``redis+cluster://``)."""
        return urlsplit(self.effective_redis_url()).scheme in CLUSTER_SCHEMES

    def shard_keys(self) -> list[str]:
        return shard_keys(self.stream_key, self.stream_shards, cluster=self.cluster())

    @property
    def health_host_port(self) -> tuple[str, int]:
        host, _, port = self.health_address.rpartition(":")
        return host.strip("[]"), int(port)
