"""Structured ``key=value`` logs and a rate limiter for hot error paths."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from collector.common.log import RateLimited as _RateLimited
from collector.common.log import quote

LOGGER = logging.getLogger("collector.pump")


class KVFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"logger={record.name}", f"msg={quote(record.getMessage())}"]
        fields = getattr(record, "kv", None)
        if fields:
            parts.extend(f"{k}={quote(v)}" for k, v in fields.items())
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not (fields and "error" in fields):
            parts.append(f"error={quote(repr(exc))}")
        if record.exc_info and record.levelno >= logging.ERROR:
            parts.append("traceback=" + quote(self.formatException(record.exc_info)))
        return " ".join(parts)


def setup(level: str = "info", process: str = "supervisor") -> None:
    root = logging.getLogger("collector")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KVFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def log(level: int, msg: str, **fields: Any) -> None:
    if LOGGER.isEnabledFor(level):
        LOGGER.log(level, msg, extra={"kv": fields})


class RateLimited(_RateLimited):
    """Log at most once per ``interval_s`` per key; count what was suppressed."""

    def log(self, key: str, level: int, msg: str, **fields: Any) -> None:
        suppressed = self.hit(key)
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        log(level, msg, **fields)
