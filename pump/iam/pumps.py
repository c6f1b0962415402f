"""iam-pump's ``kafka``, ``influx`` and ``elasticsearch`` pumps' ``meta`` as our sinks'.

The keys are iam-pump's (marmotedu/iam ``internal/pump/pumps/{kafka,influx,
elasticsearch}.go``, their ``mapstructure`` tags) plus the few names tyk-pump
uses for the same settings (``enable_sniffing``, ``username``/``password``,
``version``, ``extended_stats``), which iam files copied from it carry. Each
function returns the sink's ``meta``; a key with no equivalent is one
:class:`~collector.common.settings.ConfigWarning` through ``m.unmapped``.
:mod:`pump.iam.config` calls them; the README's migration table lists each key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import _Mapper

__all__ = ["elasticsearch_meta", "influx_meta", "kafka_meta"]

_IAM_ES_INDEX = "iam_analytics"  # iam-pump's index when index_name is empty


def _seconds(m: _Mapper, key: str, value: Any) -> float | None:
    """A number of seconds; 0 or empty keeps our default."""
    if isinstance(value, bool) or not isinstance(value, int | float | type(None)):
        m.bad(key, f"must be a number of seconds (got {value!r})")
        return None
    return float(value) if value else None


def kafka_meta(m: _Mapper, where: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``kafka`` sink's meta for iam-pump's kafka pump's (module docstring)."""
    out: dict[str, Any] = {"compression": "none"}  # iam-pump compresses only if compressed
    options: dict[str, str] = {}
    mech = str(meta.get("sasl_mechanism") or "")
    algorithm = str(meta.get("sasl_algorithm") or "")
    sasl = False
    if mech.lower() == "plain":
        out["sasl_mechanism"], sasl = "PLAIN", True
    elif mech.lower() == "scram":
        sha = "512" if algorithm.lower() == "sha-512" else "256"
        out["sasl_mechanism"], sasl = f"SCRAM-SHA-{sha}", True
    elif mech:
        m.unmapped(f"{where}.sasl_mechanism", f"{mech!r} is not PLAIN or SCRAM (iam-pump "
                                             "ignores it too); no SASL")
    tls = bool(meta.get("use_ssl"))
    out["security_protocol"] = ("sasl_" if sasl else "") + ("ssl" if tls else "plaintext")
    for key, v in meta.items():
        if key == "broker":
            brokers = [str(b) for b in ([v] if isinstance(v, str) else (v or [])) if b]
            if brokers:
                out["bootstrap_servers"] = ",".join(brokers)
        elif key == "topic":
            if v:
                out["topic"] = str(v)
        elif key == "client_id":
            if v:
                options["client.id"] = str(v)
        elif key == "timeout":
            if (seconds := _seconds(m, f"{where}.timeout", v)) is not None:
                out["connect_timeout_s"] = seconds
        elif key == "compressed":
            if v:
                out["compression"] = "snappy"
        elif key == "ssl_insecure_skip_verify":
            if v and tls:
                out["ssl_verify_hostname"] = False
                options["enable.ssl.certificate.verification"] = "false"
        elif key == "ssl_cert_file":
            if v:
                out["ssl_certificate_location"] = str(v)
        elif key == "ssl_key_file":
            if v:
                out["ssl_key_location"] = str(v)
        elif key in ("sasl_username", "sasl_password"):
            if v and sasl:
                out[key] = str(v)
        elif key == "sasl_algorithm":
            if v and not out.get("sasl_mechanism", "").startswith("SCRAM"):
                m.unmapped(f"{where}.{key}", "only with sasl_mechanism SCRAM")
        elif key in ("use_ssl", "sasl_mechanism"):
            continue
        elif key == "meta_data":
            if v:
                m.unmapped(f"{where}.{key}", "no equivalent (messages carry the record's "
                                             "fields only; add static fields upstream)")
        else:
            m.unmapped(f"{where}.{key}")
    if options:
        out["options"] = options
    return out


def influx_meta(m: _Mapper, where: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``influx`` sink's meta for iam-pump's influx pump's (module docstring)."""
    out: dict[str, Any] = {}
    renames = {"database_name": "database", "address": "url", "username": "username",
               "password": "password"}
    for key, v in meta.items():
        if key in renames:
            if v:
                out[renames[key]] = str(v)
        elif key in ("fields", "tags"):
            if v is not None:
                out[key] = [str(x) for x in ([v] if isinstance(v, str) else v)]
        else:
            m.unmapped(f"{where}.{key}")
    return out


def elasticsearch_meta(m: _Mapper, where: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``elasticsearch`` sink's meta for iam-pump's elasticsearch pump's."""
    name = str(meta.get("index_name") or _IAM_ES_INDEX).replace("%", "%%")
    out: dict[str, Any] = {"index": name + ("-%Y.%m.%d" if meta.get("rolling_index") else "")}
    key_id, api_key = meta.get("auth_api_key_id"), meta.get("auth_api_key")
    if key_id and api_key:  # iam-pump then drops basic auth
        out["api_key"] = f"{key_id}:{api_key}"
    elif key_id or api_key:
        m.unmapped(f"{where}.{'auth_api_key' if key_id else 'auth_api_key_id'}",
                   "missing: the API key needs both auth_api_key_id and auth_api_key "
                   "(iam-pump ignores one alone too)")
    basic = {"auth_basic_username": "username", "username": "username",
             "auth_basic_password": "password", "password": "password"}
    ignored = {"use_sniffing": "no sniffing: the hosts are used as given",
               "enable_sniffing": "no sniffing: the hosts are used as given",
               "document_type": "no mapping types since Elasticsearch 7: every document is _doc",
               "disable_bulk": "every write is a bulk request",
               "version": "the client speaks to Elasticsearch 7 and 8 alike",
               "extended_stats": "documents carry the record's fields"}
    for key, v in meta.items():
        if key == "elasticsearch_url":
            hosts = [h.strip() for h in str(v or "").split(",") if h.strip()]
            if hosts:
                out["hosts"] = hosts
        elif key in basic:
            if v and "api_key" in out:
                m.unmapped(f"{where}.{key}", "the API key is used instead (as iam-pump)")
            elif v:
                out[basic[key]] = str(v)
        elif key == "bulk_config":
            out.update(_bulk(m, f"{where}.bulk_config", v))
        elif key in ignored:
            if v:
                m.unmapped(f"{where}.{key}", f"no equivalent ({ignored[key]})")
        elif key not in ("index_name", "rolling_index", "auth_api_key_id", "auth_api_key"):
            m.unmapped(f"{where}.{key}")
    return out


def _bulk(m: _Mapper, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        if value:
            m.bad(where, "must be a mapping")
        return {}
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key == "bulk_actions":
            if v:
                out["chunk_size"] = v
        elif key == "bulk_size":
            if v:
                out["max_chunk_bytes"] = v
        elif key in ("workers", "flush_interval"):
            if v:
                m.unmapped(f"{where}.{key}", "no equivalent (a bulk request per batch; "
                                             "the pump's workers and batch size)")
        else:
            m.unmapped(f"{where}.{key}")
    return out
