"""Structured ``key=value`` logs and a rate limiter for hot error paths."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

LOGGER = logging.getLogger("collector.pump")


def _fmt(value: Any) -> str:
    s = str(value)
    if not s or any(c in s for c in ' "=\n\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class KVFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"logger={record.name}", f"msg={_fmt(record.getMessage())}"]
        fields = getattr(record, "kv", None)
        if fields:
            parts.extend(f"{k}={_fmt(v)}" for k, v in fields.items())
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not (fields and "error" in fields):
            parts.append(f"error={_fmt(repr(exc))}")
        if record.exc_info and record.levelno >= logging.ERROR:
            parts.append("traceback=" + _fmt(self.formatException(record.exc_info)))
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


class RateLimited:
    """Log at most once per ``interval_s`` per key; count what was suppressed."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, key: str, level: int, msg: str, **fields: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            fields["suppressed"] = suppressed
        log(level, msg, **fields)
