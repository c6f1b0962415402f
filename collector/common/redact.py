"""Keeping secrets out of logs, error messages and ``repr``.

:class:`SecretUrl` is the config type of a URL or connection string that may
carry a password (``redis_url``, a sink's ``uri``/``dsn``/``url``): a
``pydantic.SecretStr`` whose ``str``/``repr`` show it with the password
replaced by ``***`` (:func:`redact_dsn`), so it may appear in a log line.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

# libpq conninfo "password=..." (a bare word or a single-quoted string).
_CONNINFO_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, ""))


def redact_dsn(text: str) -> str:
    """A URL or a libpq ``key=value`` connection string with its password as ``***``."""
    if "://" in text:
        try:
            return redact_url(text)
        except ValueError:  # not parseable as a URL: hide what could be a password
            return "***"
    return _CONNINFO_PASSWORD.sub(r"\1***", text)


def redact_text(text: str, *secrets: str | None) -> str:
    """``text`` with every given secret replaced by ``***`` (for driver error messages)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class SecretUrl(SecretStr):
    """A URL or DSN that may hold a password; shown with the password as ``***``."""

    def _display(self) -> str:  # type: ignore[override]
        return redact_dsn(self.get_secret_value())
