"""Keeping secrets out of logs, error messages, HTTP bodies and ``repr``.

One routine for the daemon, the pump and both CLIs, in two layers:

- **By shape** (:func:`redact_url`, :func:`redact_dsn`): a URL's password,
  a user name standing alone in a URL (``https://TOKEN@host``: then it is the
  credential), the values of query parameters that carry credentials
  (``password``, ``token``, ``secret``, ``api_key``, ``sig``..., and
  ``username`` when no password goes with it) and a libpq conninfo's
  ``password=`` become ``***``. :class:`SecretUrl` is the config type of a
  URL or DSN that may carry a password: a ``pydantic.SecretStr`` shown this
  way, so it may appear in a log line.
- **By value** (:func:`remember`, :func:`scrub`): every config model
  (:class:`collector.common.settings.Settings`) hands the values of its
  ``SecretStr`` keys, and the credentials inside its ``SecretUrl`` keys, to a
  per-process set when it is validated or unpickled; a sink adds what it reads
  from the environment. :func:`scrub` replaces each of them (4 characters or
  more) by ``***``: the log formatter runs every field through it, the health
  server every body, the CLIs every error they print. A secret that reaches an
  output by a path nobody thought of is still hidden.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

__all__ = ["SecretUrl", "redact_dsn", "redact_text", "redact_url", "remember",
           "remember_model", "scrub", "url_secrets"]

MASK = "***"
MIN_SECRET = 4  # shorter values would mask digits and words everywhere

# libpq conninfo "password=..." / "sslpassword=..." (a bare word or a quoted string).
_CONNINFO_PASSWORD = re.compile(r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
# Query parameters whose value is a credential (redis-py reads ?password=,
# libpq ?password=/?sslpassword=, signed URLs ?sig=/?X-Amz-Signature=...).
_SECRET_PARAM = re.compile(
    r"pass|pwd|secret|token|credential|signature|^sig$|^key$|api_?key|access_?key"
    r"|authmechanismproperties", re.IGNORECASE)
_USER_PARAM = re.compile(r"^(user|username)$", re.IGNORECASE)


def _query_secrets(query: str) -> tuple[list[tuple[str, str]], bool]:
    pairs = parse_qsl(query, keep_blank_values=True)
    return pairs, any(_SECRET_PARAM.search(k) and v for k, v in pairs)


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***`` (module doc), its fragment dropped."""
    parts = urlsplit(url)
    pairs, query_password = _query_secrets(parts.query)
    has_password = parts.password is not None or query_password
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if parts.password is not None:
            netloc = f"{parts.username or ''}:{MASK}@{hostport}"
        elif userinfo:
            netloc = f"{MASK}@{hostport}"  # a user name alone is the credential
    query = parts.query
    if pairs and (query_password or not has_password):
        shown = []
        for k, v in pairs:
            hide = v and (_SECRET_PARAM.search(k) or (_USER_PARAM.match(k) and not has_password))
            shown.append(f"{quote(k, safe='')}={MASK if hide else quote(v, safe='/:,')}")
        query = "&".join(shown)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_dsn(text: str) -> str:
    """A URL or a libpq ``key=value`` connection string with its credentials as ``***``."""
    if "://" in text:
        try:
            return redact_url(text)
        except ValueError:  # not parseable as a URL: hide what could be a password
            return MASK
    return _CONNINFO_PASSWORD.sub(rf"\1{MASK}", text)


def url_secrets(text: str) -> list[str]:
    """The credentials inside a URL or conninfo string (as written and unquoted)."""
    found: list[str] = []
    if "://" in text:
        try:
            parts = urlsplit(text)
            pairs, query_password = _query_secrets(parts.query)
            raw_user, _, raw_password = parts.netloc.rpartition("@")[0].partition(":")
        except ValueError:
            return [text]
        if raw_password:
            found += [raw_password, unquote(raw_password)]
        elif raw_user:
            found += [raw_user, unquote(raw_user)]
        for k, v in pairs:
            if v and (_SECRET_PARAM.search(k)
                      or (_USER_PARAM.match(k) and not raw_password and not query_password)):
                found += [v, quote(v, safe=""), quote(v)]
    else:
        for m in _CONNINFO_PASSWORD.finditer(text):
            value = m.group(2)
            found += [value, value.strip("'")]
    return found


# -- by value ------------------------------------------------------------------

_lock = threading.Lock()
_known: tuple[str, ...] = ()


def remember(*secrets: str | None) -> None:
    """Hide these values (and their JSON-escaped forms) in whatever :func:`scrub` sees."""
    global _known
    new = set()
    for s in secrets:
        if s and len(s) >= MIN_SECRET:
            new.add(s)
            escaped = json.dumps(s)[1:-1]
            if escaped != s:
                new.add(escaped)
    with _lock:
        if new - set(_known):
            _known = tuple(sorted(set(_known) | new, key=len, reverse=True))


def remember_model(model: BaseModel) -> None:
    """Remember the secrets of ``model``'s own keys (``SecretStr``, in dicts and lists too)."""
    for name in type(model).model_fields:
        _remember_value(getattr(model, name, None))


def _remember_value(value: Any) -> None:
    if isinstance(value, SecretUrl):  # its credentials: the rest of it may be shown
        remember(*url_secrets(value.get_secret_value()))
    elif isinstance(value, SecretStr):
        secret = value.get_secret_value()
        remember(secret, *url_secrets(secret))
    elif isinstance(value, dict):
        for v in value.values():
            _remember_value(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _remember_value(v)


def scrub(text: str) -> str:
    """``text`` with every remembered secret replaced by ``***``."""
    for secret in _known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_text(text: str, *secrets: str | None) -> str:
    """``text`` with every given secret replaced by ``***`` (for driver error messages)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return scrub(text)


class SecretUrl(SecretStr):
    """A URL or DSN that may hold a password; shown with its credentials as ``***``."""

    def _display(self) -> str:  # type: ignore[override]
        return redact_dsn(self.get_secret_value())
