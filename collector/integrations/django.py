"""Django middleware: one analytics record per request, under WSGI and ASGI alike.

In ``settings.py``, first in the list so it times every other middleware::

    MIDDLEWARE = ["collector.integrations.django.AnalyticsMiddleware", ...]
    COLLECTOR_HTTP = {"skip_paths": ["/healthz"]}     # optional: HttpRecordOptions

``COLLECTOR_HTTP`` takes the keywords of
:class:`collector.integrations.HttpRecordOptions`; ``user_id``, ``record_builder``
and ``route`` may be given as dotted paths. The client is the process's
shared one (``$COLLECTOR_CONFIG``, made on the first request). Imports
Django and nothing else of any framework.

- ``route``: ``request.resolver_match.route`` with a leading ``/``
  (``"/orders/<int:order_id>/"``, includes joined), ``None`` for a 404.
- ``user_id``: by default the primary key of ``request.user`` when
  something (a view, another middleware) already loaded the user and it is
  authenticated. The middleware never loads it itself: that would cost a
  session query on requests that did not need one.
- timing: the record is sent from ``response.close()``, which Django's
  WSGI and ASGI handlers call after the last byte was handed to the
  server, so a ``StreamingHttpResponse`` is timed to its end and its bytes
  are counted as they stream. (Under ASGI, Django does not call ``close()``
  for a request the client abandoned mid-response: no record then.)
- a view's exception reaches this middleware as Django's 500 response and
  is recorded as such; anything that still escapes is recorded as 500 and re-raised.
- both sync and async capable: under ASGI the middleware runs in the event
  loop, and ``full_policy: block`` is refused there (:class:`collector.ConfigError`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from time import perf_counter_ns, time
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.functional import empty
from django.utils.module_loading import import_string

from ._recorder import _CURRENT, Recorder, check_policy, options_from

__all__ = ["AnalyticsMiddleware", "loaded_user_id"]

_DOTTED = ("user_id", "record_builder")


def loaded_user_id(request: HttpRequest) -> Any:
    """``request.user.pk`` if the user was already loaded and is authenticated, else None."""
    user = getattr(request, "user", None)
    if user is None:
        return None
    wrapped = getattr(user, "_wrapped", user)  # SimpleLazyObject until evaluated
    if wrapped is empty or not getattr(wrapped, "is_authenticated", False):
        return None
    pk = getattr(wrapped, "pk", None)
    return pk if pk is None or isinstance(pk, (int, str)) else str(pk)


def _header_key(header: str | None) -> str | None:
    return None if header is None else "HTTP_" + header.upper().replace("-", "_")


class AnalyticsMiddleware:
    """See the module docstring."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        options = dict(getattr(settings, "COLLECTOR_HTTP", None) or {})
        for key in _DOTTED:
            if isinstance(options.get(key), str):
                options[key] = import_string(options[key])
        route = options.pop("route", None)
        self._route = import_string(route) if isinstance(route, str) else route
        options.setdefault("user_id", loaded_user_id)
        self.recorder = Recorder(None, options_from(options))
        self._ip_key = _header_key(self.recorder.ip_header)
        self._id_key = _header_key(self.recorder.id_header)
        self._async = iscoroutinefunction(get_response)
        if self._async:
            check_policy(None, "with Django under ASGI")
            markcoroutinefunction(self)

    def stats(self) -> dict[str, int]:
        return self.recorder.stats()

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        if not self.recorder.record_all and not self.recorder.wants(request.path_info):
            return self.get_response(request)
        ts, t0 = time(), perf_counter_ns()
        added: dict[str, Any] = {}
        token = _CURRENT.set(added)
        try:
            response = self.get_response(request)
        except BaseException:
            self._reset(token)
            self._finish(request, None, ts, t0, 0, added)
            raise
        return self._watch(request, response, ts, t0, added, token)

    async def _acall(self, request: HttpRequest) -> Any:
        if not self.recorder.record_all and not self.recorder.wants(request.path_info):
            return await self.get_response(request)
        ts, t0 = time(), perf_counter_ns()
        added: dict[str, Any] = {}
        token = _CURRENT.set(added)
        try:
            response = await self.get_response(request)
        except BaseException:
            self._reset(token)
            self._finish(request, None, ts, t0, 0, added)
            raise
        return self._watch(request, response, ts, t0, added, token)

    def _watch(self, request: HttpRequest, response: HttpResponseBase, ts: float, t0: int,
               added: dict[str, Any], token: Any) -> HttpResponseBase:
        """Count the body as it goes and record when the handler closes the response."""
        counted = [0]
        if not response.streaming:
            counted[0] = len(response.content)  # type: ignore[attr-defined]
        elif getattr(response, "file_to_stream", None) is not None:
            try:  # the server may sendfile it: trust Content-Length
                counted[0] = int(response.get("Content-Length") or 0)
            except ValueError:
                counted[0] = 0
        else:
            content = response.streaming_content  # type: ignore[attr-defined]
            if response.is_async:  # type: ignore[attr-defined]
                response.streaming_content = _acount(content, counted)  # type: ignore[attr-defined]
            else:
                response.streaming_content = _count(content, counted)  # type: ignore[attr-defined]
        original_close = response.close
        done = False

        def close() -> None:
            nonlocal done
            try:
                original_close()
            finally:
                if not done:  # a handler or test client may close twice
                    done = True
                    self._reset(token)
                    self._finish(request, response, ts, t0, counted[0], added)

        response.close = close  # type: ignore[method-assign]
        return response

    @staticmethod
    def _reset(token: Any) -> None:
        try:
            _CURRENT.reset(token)
        except (ValueError, RuntimeError):  # closed from another context (ASGI handler)
            _CURRENT.set(None)

    def _finish(self, request: HttpRequest, response: HttpResponseBase | None, ts: float,
                t0: int, sent: int, added: dict[str, Any]) -> None:
        rec = self.recorder
        try:
            meta = request.META
            try:
                request_bytes = int(meta.get("CONTENT_LENGTH") or 0)
            except ValueError:
                request_bytes = 0
            if self._route is not None:
                try:
                    route = self._route(request)
                except Exception:
                    route = None
            else:
                match = getattr(request, "resolver_match", None)
                route = "/" + match.route if match is not None and match.route else None
            peer = meta.get("REMOTE_ADDR")
            record = {
                "timestamp": ts,
                "method": request.method,
                "route": route,
                "path": request.path_info,
                "status": response.status_code if response is not None else 500,
                "duration_us": (perf_counter_ns() - t0) // 1000,
                "request_bytes": request_bytes,
                "response_bytes": sent,
                "client_addr": rec.client_addr(peer, meta.get(self._ip_key))
                if self._ip_key else peer,
                "user_id": rec.lookup_user(request) if rec.want_user else None,
                "request_id": rec.request_id(meta.get(self._id_key)) if self._id_key else None,
            }
        except Exception as exc:
            rec.build_failed(exc)
            return
        rec.emit(record, added, request)


def _count(content: Iterator[bytes], counted: list[int]) -> Iterator[bytes]:
    for chunk in content:
        counted[0] += len(chunk)
        yield chunk


async def _acount(content: AsyncIterator[bytes], counted: list[int]) -> AsyncIterator[bytes]:
    async for chunk in content:
        counted[0] += len(chunk)
        yield chunk
