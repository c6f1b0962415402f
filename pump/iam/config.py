"""iam-pump's ``iam-pump.yaml`` read as this pump's config.

:func:`from_iam` maps every key of iam-pump's file (marmotedu/iam
``configs/iam-pump.yaml`` and the options behind it) onto ours; a key with no
equivalent gives one :class:`~collector.common.settings.ConfigWarning` naming
it. The README's migration table lists each key. The records come from
iam-authz-server's Redis list, so the result reads it: ``source: {type: list,
format: iam}``. The kafka, influx and elasticsearch pumps' ``meta`` are
mapped in :mod:`pump.iam.pumps`. :func:`is_iam_config` tells iam's file from ours.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from collector.common.service import is_loopback
from collector.common.settings import ConfigError, ConfigWarning

from .pumps import elasticsearch_meta, influx_meta, kafka_meta

__all__ = ["IAM_TOP_KEYS", "from_iam", "is_iam_config"]

IAM_TOP_KEYS = frozenset({
    "purge-delay", "purge-chunk", "health-check-path", "health-check-address",
    "health-check-endpoint-name", "health-check-endpoint-port", "omit-detailed-recording",
    "redis", "log", "pumps",
})
_LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning",
               "error": "error", "dpanic": "error", "panic": "error", "fatal": "error"}
_DEFAULT_CAP_BYTES = 5 * 1024 ** 3  # iam-pump's capped collection size when given 0


def is_iam_config(data: Mapping[str, Any]) -> bool:
    """True for a file with iam-pump's keys only (at least one besides ``pumps``)."""
    keys = set(data)
    return bool(keys - {"pumps"}) and keys <= IAM_TOP_KEYS


class _Mapper:
    def __init__(self, label: str) -> None:
        self.label = label
        self.problems: list[str] = []

    def unmapped(self, key: str, why: str = "no equivalent") -> None:
        warnings.warn(ConfigWarning(self.label, f"iam-pump key {key}: {why}; ignored"),
                      stacklevel=3)

    def bad(self, key: str, rule: str) -> None:
        self.problems.append(f"{self.label}: {key}: {rule}")


def from_iam(data: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Our config mapping for iam-pump's ``data`` (module docstring)."""
    m = _Mapper(label)
    out: dict[str, Any] = {"source": {"type": "list", "format": "iam"}}
    for key, value in data.items():
        if key == "purge-delay":
            out["read_block_s"] = _number(m, key, value)
        elif key == "purge-chunk":
            out["source"]["list_batch_size"] = _number(m, key, value)
        elif key == "health-check-path":
            out["health_path"] = str(value)
        elif key == "health-check-address":
            out["health_address"] = str(value)
            if not str(value).startswith(("127.", "localhost:", "[::1]:")):
                port = str(value).rpartition(":")[2]
                out["health_address"] = f"127.0.0.1:{port}"
                warnings.warn(ConfigWarning(label, (
                    f"iam-pump key health-check-address: {value} would serve /healthz, "
                    f"/readyz and /metrics, which carry no authentication, beyond this "
                    f"machine; serving them on 127.0.0.1:{port} (our own config's "
                    "health_allow_remote: true serves other interfaces)")), stacklevel=2)
        elif key == "health-check-endpoint-name":
            out["health_path"] = str(value)
        elif key == "health-check-endpoint-port":
            out["health_address"] = f"127.0.0.1:{value}"
        elif key == "omit-detailed-recording":
            out["omit_detailed_recording"] = value
        elif key == "redis":
            out.update(_redis(m, value))
        elif key == "log":
            out.update(_log(m, value))
        elif key == "pumps":
            out["pumps"] = _pumps(m, value)
        else:
            m.unmapped(key)
    if m.problems:
        raise ConfigError("\n".join(m.problems))
    return out


def _number(m: _Mapper, key: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        m.bad(key, f"must be a number (got {value!r})")
    return value


def _section(m: _Mapper, key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        m.bad(key, "must be a mapping")
        return {}
    return value


def _redis(m: _Mapper, value: Any) -> dict[str, Any]:
    r = _section(m, "redis", value)
    host, port = str(r.get("host") or "127.0.0.1"), r.get("port") or 6379
    addrs = [a for a in (r.get("addrs") or []) if a]
    cluster = bool(r.get("enable-cluster"))
    if addrs:
        host, _, port = str(addrs[0]).rpartition(":")
        if len(addrs) > 1 and not cluster:
            m.unmapped("redis.addrs", f"only the first address ({addrs[0]}) is used; set "
                                      "enable-cluster for a Redis Cluster")
    if not str(port).isdigit():
        m.bad("redis.port", f"must be a port number (got {port!r})")
    user = str(r.get("username") or "")
    password = str(r.get("password") or "")
    creds = ""
    if user or password:
        creds = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    scheme = "rediss" if r.get("use-ssl") else "redis"
    if cluster:  # every address a seed; a cluster has database 0 only
        seeds = ",".join(str(a) for a in addrs) or f"{host}:{port}"
        url = f"{scheme}+cluster://{creds}{seeds}"
    else:
        url = f"{scheme}://{creds}{host}:{port}/{int(r.get('database') or 0)}"
    if r.get("use-ssl") and r.get("ssl-insecure-skip-verify"):
        url += "?ssl_cert_reqs=none"
    out: dict[str, Any] = {"redis_url": url}
    if r.get("timeout"):
        out["redis_timeout_s"] = _number(m, "redis.timeout", r["timeout"])
    known = {"host", "port", "addrs", "username", "password", "database", "use-ssl",
             "ssl-insecure-skip-verify", "timeout"}
    for key in r:
        if key not in known | {"enable-cluster"}:
            m.unmapped(f"redis.{key}", "no equivalent (one connection per worker, no pool)"
                       if key.startswith("optimisation") else "no equivalent")
    return out


def _log(m: _Mapper, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in _section(m, "log", value).items():
        if key == "level":
            level = _LOG_LEVELS.get(str(v).lower())
            if level is None:
                m.bad("log.level", f"must be one of {', '.join(_LOG_LEVELS)} (got {v!r})")
            out["log_level"] = level or "info"
        elif key == "format":
            out["log_format"] = "json" if str(v).lower() == "json" else "kv"
        else:
            m.unmapped(f"log.{key}", "no equivalent (logs go to stderr)")
    return out


def _pumps(m: _Mapper, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in _section(m, "pumps", value).items():
        where = f"pumps.{name}"
        spec = _section(m, where, spec)
        kind = str(spec.get("type") or name)
        meta_map = _META.get(kind)
        if meta_map is None:
            m.unmapped(where, f"iam-pump's {kind!r} pump has no mapping yet: configure this "
                              "sink in collector-pump's own format (configs/pump.yaml)")
            continue
        ours: dict[str, Any] = {"type": meta_map[0]}
        for key, v in spec.items():
            if key == "type":
                continue
            if key == "filters":
                ours["filters"] = _filters(m, f"{where}.filters", v)
            elif key == "timeout":
                if v:
                    ours["timeout_s"] = _number(m, f"{where}.timeout", v)
            elif key == "omit-detailed-recording":
                ours["omit_detailed_recording"] = v
            elif key == "meta":
                ours["meta"] = meta_map[1](m, f"{where}.meta", _section(m, f"{where}.meta", v))
            else:
                m.unmapped(f"{where}.{key}")
        ours.setdefault("meta", meta_map[1](m, f"{where}.meta", {}))
        out[name] = ours
    if not out:
        m.bad("pumps", "no pump left that collector-pump can run")
    return out


def _filters(m: _Mapper, where: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in _section(m, where, value).items():
        if key in ("usernames", "skip_usernames"):
            out[key] = list(v or [])
        else:
            m.unmapped(f"{where}.{key}")
    return out


def _mongo(m: _Mapper, where: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    renames = {"collection_name": "collection", "mongo_use_ssl": "tls",
               "mongo_ssl_insecure_skip_verify": "tls_allow_invalid_certificates",
               "mongo_ssl_allow_invalid_hostnames": "tls_allow_invalid_hostnames",
               "mongo_ssl_ca_file": "tls_ca_file", "mongo_ssl_pem_keyfile":
               "tls_certificate_key_file"}
    cap = meta.get("collection_cap_enable")
    for key, v in meta.items():
        if key == "mongo_url":
            out["uri"] = str(v)
            # mgo's session.DB(""): the database named in the URL, else "test"
            out["database"] = urlsplit(str(v)).path.strip("/") or "test"
        elif key in renames:
            if v not in (None, ""):
                out[renames[key]] = v
        elif key == "collection_cap_enable":
            continue
        elif key == "collection_cap_max_size_bytes":
            if not cap:
                m.unmapped(f"{where}.{key}", "collection_cap_enable is not true")
        else:
            m.unmapped(f"{where}.{key}")
    if cap:
        out["capped_size_bytes"] = int(meta.get("collection_cap_max_size_bytes") or
                                       _DEFAULT_CAP_BYTES)
    return out


def _csv(m: _Mapper, where: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"path": "./analytics-data", "format": "csv", "csv_style": "iam"}
    for key, v in meta.items():
        if key == "csv_dir":
            out["path"] = str(v)
        else:
            m.unmapped(f"{where}.{key}")
    return out


def _syslog(m: _Mapper, where: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"address": "localhost:5140"}
    for key, v in meta.items():
        if key == "transport":
            if str(v) in ("udp", "tcp"):
                out["transport"] = str(v)
            else:
                m.unmapped(f"{where}.transport", f"{v!r} is not supported (udp, tcp); udp used")
        elif key == "network_addr":
            out["address"] = str(v)
        elif key == "tag":
            out["app_name"] = str(v)
        else:
            m.unmapped(f"{where}.{key}", "no equivalent (RFC 5424 facility and severity are "
                                         "meta facility/severity)")
    return out


def _prometheus(m: _Mapper, where: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in meta.items():
        if key == "listen_address":
            host, _, port = str(v).rpartition(":")
            out["address"] = str(v)
            if not is_loopback(host.strip("[]")):
                out["address"] = f"127.0.0.1:{port}"
                warnings.warn(ConfigWarning(m.label, (
                    f"iam-pump key {where}.{key}: {v} would serve /metrics, which carries no "
                    f"authentication, beyond this machine; serving it on 127.0.0.1:{port} "
                    "(our meta allow_remote: true serves other interfaces)")), stacklevel=3)
        else:
            m.unmapped(f"{where}.{key}", "no equivalent (metrics are served on /metrics)")
    return out


def _none(m: _Mapper, where: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    for key in meta:
        m.unmapped(f"{where}.{key}")
    return {}


# iam-pump pump type -> (our sink type, meta mapper)
_META: dict[str, tuple[str, Callable[[_Mapper, str, Mapping[str, Any]], dict[str, Any]]]] = {
    "mongo": ("mongo", _mongo),
    "csv": ("file", _csv),
    "syslog": ("syslog", _syslog),
    "prometheus": ("prometheus", _prometheus),
    "dummy": ("null", _none),
    "kafka": ("kafka", kafka_meta),
    "influx": ("influx", influx_meta),
    "elasticsearch": ("elasticsearch", elasticsearch_meta),
}
