"""WSGI middleware: one analytics record per request, for any WSGI app (Flask included).

::

    from collector.integrations.wsgi import AnalyticsMiddleware
    app = AnalyticsMiddleware(app, skip_paths=["/healthz"])   # options: HttpRecordOptions

For Flask, :func:`collector.integrations.flask.instrument` wraps
``app.wsgi_app`` with this and adds the route template. This module
imports no framework.

When the record is sent: when the server has taken the body's last chunk
(the iterable is exhausted) or calls ``close()`` on it, whichever comes
first; PEP 3333 servers (gunicorn in every worker class) do both after
writing the body, so ``duration_us`` covers a streamed body too. (A test
client that never reads the body records nothing until it is closed.)
An exception out of the app before it started a response is recorded as
status 500 and re-raised. A ``wsgi.file_wrapper`` body is passed through
untouched (the server may ``sendfile`` it): it is recorded when the app
returns it, with ``response_bytes`` from its Content-Length.

The route template comes from ``environ["collector.route"]`` (where a
framework integration puts it; the Flask one does) or from the ``route``
hook, ``route(environ) -> str | None``, called after the app returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from time import perf_counter_ns, time
from typing import TYPE_CHECKING, Any

from ._recorder import _CURRENT, Recorder, options_from

if TYPE_CHECKING:
    from .._client import Analytics

__all__ = ["ROUTE_KEY", "AnalyticsMiddleware"]

ROUTE_KEY = "collector.route"
"""The environ key a framework integration sets to the matched route template."""

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _environ_key(header: str | None) -> str | None:
    if header is None:
        return None
    return "HTTP_" + header.upper().replace("-", "_")


class AnalyticsMiddleware:
    """Wraps a WSGI app; see the module docstring. ``stats()`` gives its counters."""

    def __init__(self, app: WSGIApp, analytics: Analytics | None = None, *,
                 route: Callable[[dict[str, Any]], str | None] | None = None,
                 **options: Any) -> None:
        self.app = app
        self.recorder = Recorder(analytics, options_from(options))
        self._route = route
        self._ip_key = _environ_key(self.recorder.ip_header)
        self._id_key = _environ_key(self.recorder.id_header)

    def stats(self) -> dict[str, int]:
        return self.recorder.stats()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        rec = self.recorder
        if not rec.record_all and not rec.wants(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        ts = time()
        t0 = perf_counter_ns()
        added: dict[str, Any] = {}
        token = _CURRENT.set(added)
        body = _Body(self, environ, added, token, ts, t0)

        def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            body.status = status
            body.headers = headers
            write = start_response(status, headers, exc_info)
            if write is None:
                return None

            def counting_write(data: bytes) -> Any:
                body.sent += len(data)
                return write(data)

            return counting_write

        encoding = environ.get("HTTP_TRANSFER_ENCODING")
        if encoding is not None and encoding.lower() == "chunked" and \
                not environ.get("CONTENT_LENGTH"):
            environ["wsgi.input"] = body.input = _CountingInput(environ["wsgi.input"])
        try:
            inner = self.app(environ, sr)
        except BaseException:
            if body.status is None:
                body.status = "500"
            body.finish()
            raise
        wrapper = environ.get("wsgi.file_wrapper") if type(inner) is not list else None
        if wrapper is not None and isinstance(wrapper, type) and isinstance(inner, wrapper):
            body.sent = _content_length(body.headers)
            body.finish()
            return inner
        body.inner = inner
        return body

    def _finish(self, body: _Body) -> None:
        environ = body.environ
        rec = self.recorder
        status = body.status
        try:
            code: int | None = int(status[:3]) if status else None
        except ValueError:
            code = None
        length = environ.get("CONTENT_LENGTH")
        if body.input is not None:
            request_bytes = body.input.count
        else:
            try:
                request_bytes = int(length) if length else 0
            except ValueError:
                request_bytes = 0
        route = environ.get(ROUTE_KEY)
        if self._route is not None:
            try:
                route = self._route(environ)
            except Exception:
                route = None
        peer = environ.get("REMOTE_ADDR")
        record = {
            "timestamp": body.ts,
            "method": environ.get("REQUEST_METHOD"),
            "route": route,
            "path": environ.get("PATH_INFO", ""),
            "status": code,
            "duration_us": (perf_counter_ns() - body.t0) // 1000,
            "request_bytes": request_bytes,
            "response_bytes": body.sent,
            "client_addr": rec.client_addr(peer, environ.get(self._ip_key))
            if self._ip_key else peer,
            "user_id": rec.lookup_user(environ) if rec.want_user else None,
            "request_id": rec.request_id(environ.get(self._id_key)) if self._id_key else None,
        }
        rec.emit(record, body.added, environ)


def _content_length(headers: list[tuple[str, str]] | None) -> int:
    for k, v in headers or ():
        if k.lower() == "content-length":
            try:
                return int(v)
            except ValueError:
                return 0
    return 0


class _CountingInput:
    """``wsgi.input`` for a chunked request body: counts the bytes the app reads."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.count = 0

    def read(self, *args: Any) -> bytes:
        data = self._inner.read(*args)
        self.count += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data = self._inner.readline(*args)
        self.count += len(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines = self._inner.readlines(*args)
        self.count += sum(map(len, lines))
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._inner:
            self.count += len(line)
            yield line


class _Body:
    """The response iterable handed to the server: counts bytes, records on ``close()``."""

    __slots__ = ("added", "done", "environ", "headers", "inner", "input", "mw", "sent",
                 "status", "t0", "token", "ts")

    def __init__(self, mw: AnalyticsMiddleware, environ: dict[str, Any],
                 added: dict[str, Any], token: Any, ts: float, t0: int) -> None:
        self.mw = mw
        self.environ = environ
        self.added = added
        self.token = token
        self.ts = ts
        self.t0 = t0
        self.status: str | None = None
        self.headers: list[tuple[str, str]] | None = None
        self.sent = 0
        self.inner: Iterable[bytes] = ()
        self.input: _CountingInput | None = None
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.sent += len(chunk)
            yield chunk
        self.finish()  # the server took the last chunk (close() may follow, or not)

    def close(self) -> None:
        try:
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            _CURRENT.reset(self.token)
        except (ValueError, RuntimeError):  # closed in another context than the call
            _CURRENT.set(None)
        try:
            self.mw._finish(self)
        except Exception as exc:  # never into the server or the app
            self.mw.recorder.build_failed(exc)
