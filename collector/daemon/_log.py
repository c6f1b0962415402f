"""Structured logs for the daemon: one line per event, ``key=value`` or JSON.

Every line carries ``ts``, ``level``, ``proc`` (``supervisor`` or
``flusher-N``) and ``msg`` (a sentence); the exception field is always
``error``. Hot error paths go through :class:`RateLimited`, which lets one
line per interval through and counts what it held back (``suppressed=N``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from collector.common.log import RateLimited, quote

LOGGER = logging.getLogger("collector.daemon")
__all__ = ["RateLimited", "debug", "error", "info", "log", "setup", "warning"]


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, proc: str) -> None:
        super().__init__()
        self.json = fmt == "json"
        self.proc = proc

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts = f"{ts}.{int(record.msecs):03d}Z"
        fields: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(),
                                  "proc": self.proc, "msg": record.getMessage()}
        fields.update(getattr(record, "kv", None) or {})
        if record.exc_info and record.exc_info[1] is not None and "error" not in fields:
            fields["error"] = repr(record.exc_info[1])
        if self.json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={quote(v)}" for k, v in fields.items())


def setup(fmt: str = "kv", level: str = "info", proc: str = "supervisor") -> None:
    """Send the daemon's logs to stderr in ``fmt`` (``kv`` or ``json``)."""
    for h in list(LOGGER.handlers):
        LOGGER.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt, proc))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level.upper())
    LOGGER.propagate = False


def log(level: int, msg: str, **fields: Any) -> None:
    if LOGGER.isEnabledFor(level):
        LOGGER.log(level, msg, extra={"kv": fields})


def debug(msg: str, **fields: Any) -> None:
    log(logging.DEBUG, msg, **fields)


def info(msg: str, **fields: Any) -> None:
    log(logging.INFO, msg, **fields)


def warning(msg: str, **fields: Any) -> None:
    log(logging.WARNING, msg, **fields)


def error(msg: str, **fields: Any) -> None:
    log(logging.ERROR, msg, **fields)
