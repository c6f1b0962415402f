"""The apps ``python -m bench integrations`` serves, each built three ways: without
collector's middleware, with it, and recording by hand (the handler calls
``Analytics.record_hit`` once with the record the middleware would send).

Frameworks: a plain WSGI app, Flask, Django under WSGI and under ASGI (this
module is Django's ``ROOT_URLCONF``), a plain ASGI app, Starlette, FastAPI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple


class Served(NamedTuple):
    """One variant: an app and the path requested from it."""

    kind: str  # "wsgi" | "asgi"
    app: Any
    path: str


def wsgi_runner(app: Any, path: str) -> Served:
    return Served("wsgi", app, path)


def asgi_runner(app: Any, path: str) -> Served:
    return Served("asgi", app, path)


# -- the apps: without the middleware, with it, and recording by hand --------------
# What the middleware sends for this request, for the app that records by hand.
RECORD = {"timestamp": 0.0, "method": "GET", "route": "/orders/{order_id}", "path": "/orders/7",
          "status": 200, "duration_us": 123, "request_bytes": 0, "response_bytes": 35,
          "client_addr": "127.0.0.1", "user_id": None, "request_id": "bench-0123456789"}
BODY = b'{"order_id": 7, "state": "shipped"}'

Variants = tuple[Served, Served, Served]  # without, with the middleware, by hand


def _variants(runner: Callable[[Any, str], Served],
              build: Callable[[bool, bool], Any]) -> Variants:
    """``build(with_middleware, by_hand)`` three times: without, with, by hand."""
    return (runner(build(False, False), "/orders/7"), runner(build(True, False), "/orders/7"),
            runner(build(False, True), "/orders/7"))


def _by_hand(analytics: Any) -> Callable[[], None]:
    hit = analytics.record_hit

    def record() -> None:
        hit(dict(RECORD, timestamp=time.time()))
    return record


def plain_wsgi(analytics: Any) -> Variants:
    from collector.integrations.wsgi import AnalyticsMiddleware

    record = _by_hand(analytics)

    def build(with_mw: bool, by_hand: bool) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            if by_hand:
                record()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [BODY]
        return AnalyticsMiddleware(app, analytics) if with_mw else app

    return _variants(wsgi_runner, build)


def flask_app(analytics: Any) -> Variants:
    from flask import Flask

    from collector.integrations.flask import instrument

    record = _by_hand(analytics)

    def build(with_mw: bool, by_hand: bool) -> Any:
        app = Flask(f"bench_{with_mw}_{by_hand}")

        @app.get("/orders/<int:order_id>")
        def order(order_id: int) -> dict[str, Any]:
            if by_hand:
                record()
            return {"order_id": order_id, "state": "shipped"}

        if with_mw:
            instrument(app, analytics)
        return app

    return _variants(wsgi_runner, build)


_django_record: list[Callable[[], None]] = []


def _django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="bench-only", ALLOWED_HOSTS=["localhost"],
            ROOT_URLCONF="bench._integration_apps", INSTALLED_APPS=[], DATABASES={},
            MIDDLEWARE=["django.middleware.common.CommonMiddleware"], USE_TZ=True)
        django.setup()


def _django_order(request: Any, order_id: int) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"order_id": order_id, "state": "shipped"})


def _django_order_by_hand(request: Any, order_id: int) -> Any:
    _django_record[0]()
    return _django_order(request, order_id)


def __getattr__(name: str) -> Any:  # this module is the benchmark's ROOT_URLCONF
    if name == "urlpatterns":
        from django.urls import path

        return [path("orders/<int:order_id>", _django_order),
                path("hand/<int:order_id>", _django_order_by_hand)]
    raise AttributeError(name)


def _django_variants(kind: str, analytics: Any) -> Variants:
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    from collector.integrations import _recorder

    _django()
    _recorder._default = analytics  # the middleware's shared client
    _django_record[:] = [_by_hand(analytics)]
    cls = WSGIHandler if kind == "wsgi" else ASGIHandler
    runner = wsgi_runner if kind == "wsgi" else asgi_runner
    base = ["django.middleware.common.CommonMiddleware"]
    settings.MIDDLEWARE = base
    without = cls()
    settings.MIDDLEWARE = ["collector.integrations.django.AnalyticsMiddleware", *base]
    with_mw = cls()
    settings.MIDDLEWARE = base
    return runner(without, "/orders/7"), runner(with_mw, "/orders/7"), runner(without, "/hand/7")


def django_wsgi(analytics: Any) -> Variants:
    return _django_variants("wsgi", analytics)


def django_asgi(analytics: Any) -> Variants:
    return _django_variants("asgi", analytics)


def plain_asgi(analytics: Any) -> Variants:
    from collector.integrations.asgi import AnalyticsMiddleware

    record = _by_hand(analytics)

    def build(with_mw: bool, by_hand: bool) -> Any:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if by_hand:
                record()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": BODY})
        return AnalyticsMiddleware(app, analytics) if with_mw else app

    return _variants(asgi_runner, build)


def starlette_app(analytics: Any) -> Variants:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from collector.integrations.asgi import AnalyticsMiddleware

    record = _by_hand(analytics)

    def build(with_mw: bool, by_hand: bool) -> Any:
        async def order(request: Any) -> JSONResponse:
            if by_hand:
                record()
            return JSONResponse({"order_id": request.path_params["order_id"],
                                 "state": "shipped"})

        app = Starlette(routes=[Route("/orders/{order_id:int}", order)])
        if with_mw:
            app.add_middleware(AnalyticsMiddleware, analytics=analytics)
        return app

    return _variants(asgi_runner, build)


def fastapi_app(analytics: Any) -> Variants:
    from fastapi import FastAPI

    from collector.integrations.asgi import AnalyticsMiddleware

    record = _by_hand(analytics)

    def build(with_mw: bool, by_hand: bool) -> Any:
        app = FastAPI()

        @app.get("/orders/{order_id}")
        async def order(order_id: int) -> dict[str, Any]:
            if by_hand:
                record()
            return {"order_id": order_id, "state": "shipped"}

        if with_mw:
            app.add_middleware(AnalyticsMiddleware, analytics=analytics)
        return app

    return _variants(asgi_runner, build)


FRAMEWORKS: dict[str, Callable[[Any], Variants]] = {
    "plain WSGI": plain_wsgi,
    "Flask": flask_app,
    "Django (WSGI)": django_wsgi,
    "Django (ASGI)": django_asgi,
    "plain ASGI": plain_asgi,
    "Starlette": starlette_app,
    "FastAPI": fastapi_app,
}
