"""ASGI middleware: one analytics record per HTTP request or WebSocket connection.

Starlette and FastAPI::

    from collector.integrations.asgi import AnalyticsMiddleware
    app = FastAPI()
    app.add_middleware(AnalyticsMiddleware, skip_paths=["/healthz"])

or around any ASGI app: ``app = AnalyticsMiddleware(app)``. This module imports
no framework; it reads the route template from ``scope["route"]``, which
Starlette's and FastAPI's routers set to the route they matched
(``"/items/{item_id}"``; under a ``Mount`` the mount's prefix is added).
Options: :class:`collector.integrations.HttpRecordOptions`, plus ``route``,
``route(scope) -> str | None``, for other frameworks.

HTTP: the record is sent when the app returns; ``duration_us`` ends when
the last body message (``more_body`` false) was handed to the server, so a
streaming response is timed to its last byte and a background task that
runs afterwards is not counted. ``request_bytes`` counts the
``http.request`` body the app received. An exception out of the app is
recorded (status 500 when no response had started) and re-raised.

WebSocket: one record per connection, sent when the app returns: method
``"WEBSOCKET"``, status 101 once accepted or 403 when closed before (the
handshake was refused), ``duration_us`` the connection's life,
``request_bytes``/``response_bytes`` the message payloads received and sent.

``full_policy: block`` is refused (:class:`collector.ConfigError` when the
middleware is made): a full ring would make ``record_hit`` sleep on the
event loop's thread and stall every connection of the worker. ``lifespan``
and other scopes pass through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter_ns, time
from typing import TYPE_CHECKING, Any

from ._recorder import _CURRENT, Recorder, check_policy, options_from

if TYPE_CHECKING:
    from .._client import Analytics

__all__ = ["AnalyticsMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def route_template(scope: Scope, root_path: str) -> str | None:
    """The template of the route Starlette/FastAPI matched, with any mount prefix."""
    route = scope.get("route")
    if route is None:
        return None
    fmt = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(fmt, str):
        return None
    if not hasattr(route, "routes"):  # not a Mount: add the prefixes of mounts passed
        inner_root = scope.get("root_path", "")
        if inner_root != root_path and inner_root.startswith(root_path):
            fmt = inner_root[len(root_path):] + fmt
    return fmt


class AnalyticsMiddleware:
    """Wraps an ASGI app; see the module docstring. ``stats()`` gives its counters."""

    def __init__(self, app: ASGIApp, analytics: Analytics | None = None, *,
                 route: Callable[[Scope], str | None] | None = None,
                 **options: Any) -> None:
        check_policy(analytics, "with an ASGI app (collector.integrations.asgi)")
        self.app = app
        self.recorder = Recorder(analytics, options_from(options))
        self._route = route
        rec = self.recorder
        self._ip_header = rec.ip_header.lower().encode("latin-1") if rec.ip_header else None
        self._id_header = rec.id_header.lower().encode("latin-1") if rec.id_header else None

    def stats(self) -> dict[str, int]:
        return self.recorder.stats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            return await self.app(scope, receive, send)
        rec = self.recorder
        if not rec.record_all and not rec.wants(scope.get("path", "")):
            return await self.app(scope, receive, send)
        ts = time()
        t0 = perf_counter_ns()
        root = scope.get("root_path", "")
        status: int | None = None
        sent = 0
        received = 0
        t_end = 0
        added: dict[str, Any] = {}
        token = _CURRENT.set(added)

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            mtype = message["type"]
            if mtype == "http.request":
                received += len(message.get("body", b""))
            elif mtype == "websocket.receive":
                received += _ws_size(message)
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent, t_end
            mtype = message["type"]
            if mtype == "http.response.body":
                sent += len(message.get("body", b""))
                await send(message)
                if not message.get("more_body", False):
                    t_end = perf_counter_ns()  # the last byte went to the server
                return
            if mtype == "http.response.start":
                status = message["status"]
            elif mtype == "websocket.send":
                sent += _ws_size(message)
            elif mtype == "websocket.accept":
                status = 101
            elif mtype == "websocket.close" and status is None:
                status = 403  # closed before accepting: the handshake was refused
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException:
            if status is None:
                status = 500
            raise
        finally:
            _CURRENT.reset(token)
            method = scope["method"] if kind == "http" else "WEBSOCKET"
            self._emit(scope, root, method, status, ts, t0, t_end, received, sent, added)

    def _emit(self, scope: Scope, root: str, method: str, status: int | None, ts: float,
              t0: int, t_end: int, received: int, sent: int, added: dict[str, Any]) -> None:
        rec = self.recorder
        try:
            request_id = ip_value = None
            if self._id_header is not None or self._ip_header is not None:
                for name, value in scope.get("headers") or ():
                    if name == self._id_header:
                        request_id = rec.request_id(value.decode("latin-1"))
                    elif name == self._ip_header:
                        ip_value = value.decode("latin-1")
            client = scope.get("client")
            peer = client[0] if client else None
            if self._route is not None:
                try:
                    route = self._route(scope)
                except Exception:
                    route = None
            else:
                route = route_template(scope, root)
            record = {
                "timestamp": ts,
                "method": method,
                "route": route,
                "path": scope.get("path", ""),
                "status": status,
                "duration_us": ((t_end or perf_counter_ns()) - t0) // 1000,
                "request_bytes": received,
                "response_bytes": sent,
                "client_addr": rec.client_addr(peer, ip_value) if self._ip_header else peer,
                "user_id": rec.lookup_user(scope) if rec.want_user else None,
                "request_id": request_id,
            }
        except Exception as exc:
            rec.build_failed(exc)
            return
        rec.emit(record, added, scope)


def _ws_size(message: Message) -> int:
    data = message.get("bytes")
    if data:
        return len(data)
    text = message.get("text")
    return len(text.encode("utf-8")) if text else 0
