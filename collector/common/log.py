"""Structured logs for the daemon, the pump and the sinks: one line per event.

One call style everywhere::

    log = get_logger(__name__)
    log.info("Sentence saying what happened.", key=value, error=exc)

:func:`setup` configures the process's *root* logger, so every logger of
the process (ours, the sinks' ``pump.sinks.*``, the client's, the drivers')
comes out on stderr in one format, ``kv`` or ``json``, with the same fields
in both services::

    ts=2026-11-28T10:00:00.123Z level=info proc=supervisor logger=pump._supervisor
        msg="Worker exited; restarting it." sink=file worker=0 exitcode=-9

``ts`` (UTC), ``level``, ``proc`` (the process's role: ``supervisor``,
``flusher-N``, ``worker-<sink>-N``), ``logger`` and ``msg`` come first, then
the event's own fields in call order. The exception field is always
``error`` (from ``exc_info`` when the call gives none); errors logged with
``exc_info`` also carry ``traceback``. Exceptions given as values print as
their message (or their type when the message is empty).

Every field passes :func:`collector.common.redact.scrub` (no remembered
secret comes out), and so does an uncaught exception's traceback once
:func:`setup` ran.

Hot error paths go through :class:`RateLimited`: one line per interval and
key, with ``suppressed=N`` counting what it held back.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from typing import Any, Literal

from .redact import scrub

LogFormat = Literal["kv", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

__all__ = ["LogFormat", "LogLevel", "Logger", "RateLimited", "get_logger", "quote", "setup"]


def quote(value: Any) -> str:
    """``value`` as the right-hand side of ``key=value``: quoted when needed."""
    s = str(_plain(value))
    if not s or any(c in s for c in ' "=\n\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def _plain(value: Any) -> Any:
    if isinstance(value, BaseException):
        return scrub(str(value)) or type(value).__name__
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return scrub(str(value))


class Formatter(logging.Formatter):
    """Renders a record as ``key=value`` pairs or one JSON object."""

    def __init__(self, fmt: LogFormat = "kv", proc: str = "main") -> None:
        super().__init__()
        self.json = fmt == "json"
        self.proc = proc

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z", "level": record.levelname.lower(),
            "proc": self.proc, "logger": record.name, "msg": record.getMessage()}
        fields.update(getattr(record, "kv", None) or {})
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and "error" not in fields:
            fields["error"] = scrub(repr(exc))
        if record.exc_info and record.levelno >= logging.ERROR:
            fields["traceback"] = self.formatException(record.exc_info)
        if self.json:
            return json.dumps({k: _plain(v) for k, v in fields.items()})
        return " ".join(f"{k}={quote(v)}" for k, v in fields.items())


def setup(fmt: LogFormat = "kv", level: str = "info", proc: str = "main") -> None:
    """Send every logger of this process to stderr in ``fmt`` (``kv`` or ``json``)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter(fmt, proc))
    root.addHandler(handler)
    root.setLevel(level.upper())
    sys.excepthook = _uncaught
    threading.excepthook = lambda a: _uncaught(a.exc_type, a.exc_value, a.exc_traceback)


def _uncaught(kind: type[BaseException], exc: BaseException | None, tb: Any) -> None:
    """An uncaught exception's traceback on stderr, with no remembered secret in it."""
    if kind is SystemExit:
        return
    sys.stderr.write(scrub("".join(traceback.format_exception(kind, exc, tb))))


class Logger:
    """A ``logging.Logger`` taking the event's fields as keyword arguments."""

    __slots__ = ("logger",)

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def log(self, level: int, msg: str, *, exc_info: bool = False, **fields: Any) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, msg, exc_info=exc_info, extra={"kv": fields})

    def debug(self, msg: str, **fields: Any) -> None:
        self.log(logging.DEBUG, msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log(logging.INFO, msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self.log(logging.WARNING, msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log(logging.ERROR, msg, **fields)

    def exception(self, msg: str, **fields: Any) -> None:
        """An error with the exception being handled (its traceback included)."""
        self.log(logging.ERROR, msg, exc_info=True, **fields)


def get_logger(name: str) -> Logger:
    return Logger(name)


class RateLimited:
    """Let one event per ``interval_s`` and key through; count the rest.

    ``hit(key)`` returns ``None`` while the event is suppressed, or the
    number of events suppressed since the last line (0 the first time);
    ``warning(key, msg, ...)`` / ``error(...)`` log through ``log`` with
    ``suppressed=N`` when something was held back.
    """

    def __init__(self, interval_s: float = 10.0, log: Logger | None = None) -> None:
        self.interval_s = interval_s
        self.logger = log
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def hit(self, key: str) -> int | None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)

    def reset(self, key: str) -> int:
        """Forget ``key`` (the condition ended); return what was still held back."""
        self._last.pop(key, None)
        return self._held.pop(key, 0)

    def log(self, key: str, level: int, msg: str, **fields: Any) -> None:
        suppressed = self.hit(key)
        if suppressed is None or self.logger is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        self.logger.log(level, msg, **fields)

    def warning(self, key: str, msg: str, **fields: Any) -> None:
        self.log(key, logging.WARNING, msg, **fields)

    def error(self, key: str, msg: str, **fields: Any) -> None:
        self.log(key, logging.ERROR, msg, **fields)
