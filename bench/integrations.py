"""``python -m bench integrations [--quick]``: the middlewares' cost per request.

For each framework, in one run and one process: the same request served by
the app without and with collector's middleware, called the way a server
calls it (WSGI: ``app(environ, start_response)``, iterate, ``close()``;
ASGI: ``await app(scope, receive, send)`` on one event loop; Django through
its own ``WSGIHandler`` and ``ASGIHandler``), and a bare
``Analytics.record_hit`` of the record the middleware sends. Rounds of
``--requests`` requests alternate without/with/bare, in reversed order every
other round (so drift and order effects hit all three alike); each
figure is the median over rounds of the mean ns per request. The
middleware's cost is *with - without*; it includes its ``record_hit``,
printed beside it, so *cost - record_hit* is what the middleware itself adds
(timing, the record dict, the body wrapper, the context variable).

The records go into a real ring in a private directory, drained by the
benchmark between rounds (outside the timed loops); no daemon runs, so
the figures are the app process's own cost. Frameworks: a plain WSGI app,
Flask, Django under WSGI and under ASGI, a plain ASGI app, Starlette, FastAPI.
Django under ASGI runs its sync middleware and ``response.close()`` in
threads (asgiref): its requests cost ~1 ms with a spread far larger than the
middleware, whose figure there is noise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

Runner = Callable[[int], None]  # serve n requests


def _environ(path: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "bench",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost", "HTTP_X_REQUEST_ID": "bench-0123456789",
        "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    return None


def wsgi_runner(app: Any, path: str) -> Runner:
    def run(n: int) -> None:
        for _ in range(n):
            result = app(_environ(path), _start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
    return run


def asgi_runner(app: Any, path: str) -> Runner:
    headers = [(b"host", b"localhost"), (b"x-request-id", b"bench-0123456789")]
    loop = asyncio.new_event_loop()

    never = loop.create_future()  # after the body: no disconnect comes (like a keep-alive)

    def receiver() -> Callable[[], Any]:
        first = [True]

        async def receive() -> dict[str, Any]:
            if first[0]:
                first[0] = False
                return {"type": "http.request", "body": b"", "more_body": False}
            return await asyncio.shield(never)
        return receive

    async def send(message: dict[str, Any]) -> None:
        return None

    async def serve(n: int) -> None:
        for _ in range(n):
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                     "method": "GET", "scheme": "http", "path": path,
                     "raw_path": path.encode(), "query_string": b"", "root_path": "",
                     "headers": headers, "client": ("127.0.0.1", 50000),
                     "server": ("127.0.0.1", 8000)}
            await app(scope, receiver(), send)

    def run(n: int) -> None:
        loop.run_until_complete(serve(n))
    return run


# -- the apps, each without and with the middleware ------------------------------
def plain_wsgi(analytics: Any) -> tuple[Runner, Runner]:
    from collector.integrations.wsgi import AnalyticsMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"order_id": 7, "state": "shipped"}']

    return (wsgi_runner(app, "/orders/7"),
            wsgi_runner(AnalyticsMiddleware(app, analytics), "/orders/7"))


def flask_app(analytics: Any) -> tuple[Runner, Runner]:
    from flask import Flask

    from collector.integrations.flask import instrument

    def build(with_mw: bool) -> Any:
        app = Flask(f"bench_{with_mw}")

        @app.get("/orders/<int:order_id>")
        def order(order_id: int) -> dict[str, Any]:
            return {"order_id": order_id, "state": "shipped"}

        if with_mw:
            instrument(app, analytics)
        return app

    return wsgi_runner(build(False), "/orders/7"), wsgi_runner(build(True), "/orders/7")


def _django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="bench-only", ALLOWED_HOSTS=["localhost"],
            ROOT_URLCONF="bench.integrations", INSTALLED_APPS=[], DATABASES={},
            MIDDLEWARE=["django.middleware.common.CommonMiddleware"], USE_TZ=True)
        django.setup()


def _django_order(request: Any, order_id: int) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"order_id": order_id, "state": "shipped"})


def __getattr__(name: str) -> Any:  # this module is the benchmark's ROOT_URLCONF
    if name == "urlpatterns":
        from django.urls import path

        return [path("orders/<int:order_id>", _django_order)]
    raise AttributeError(name)


def _django_handlers(kind: str, analytics: Any) -> tuple[Any, Any]:
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    from collector.integrations import _recorder

    _recorder._default = analytics  # the middleware's shared client
    cls = WSGIHandler if kind == "wsgi" else ASGIHandler
    base = ["django.middleware.common.CommonMiddleware"]
    settings.MIDDLEWARE = base
    without = cls()
    settings.MIDDLEWARE = ["collector.integrations.django.AnalyticsMiddleware", *base]
    with_mw = cls()
    settings.MIDDLEWARE = base
    return without, with_mw


def django_wsgi(analytics: Any) -> tuple[Runner, Runner]:
    _django()
    without, with_mw = _django_handlers("wsgi", analytics)
    return wsgi_runner(without, "/orders/7"), wsgi_runner(with_mw, "/orders/7")


def django_asgi(analytics: Any) -> tuple[Runner, Runner]:
    _django()
    without, with_mw = _django_handlers("asgi", analytics)
    return asgi_runner(without, "/orders/7"), asgi_runner(with_mw, "/orders/7")


def plain_asgi(analytics: Any) -> tuple[Runner, Runner]:
    from collector.integrations.asgi import AnalyticsMiddleware

    body = b'{"order_id": 7, "state": "shipped"}'

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return (asgi_runner(app, "/orders/7"),
            asgi_runner(AnalyticsMiddleware(app, analytics), "/orders/7"))


def starlette_app(analytics: Any) -> tuple[Runner, Runner]:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from collector.integrations.asgi import AnalyticsMiddleware

    async def order(request: Any) -> JSONResponse:
        return JSONResponse({"order_id": request.path_params["order_id"], "state": "shipped"})

    def build(with_mw: bool) -> Any:
        app = Starlette(routes=[Route("/orders/{order_id:int}", order)])
        if with_mw:
            app.add_middleware(AnalyticsMiddleware, analytics=analytics)
        return app

    return asgi_runner(build(False), "/orders/7"), asgi_runner(build(True), "/orders/7")


def fastapi_app(analytics: Any) -> tuple[Runner, Runner]:
    from fastapi import FastAPI

    from collector.integrations.asgi import AnalyticsMiddleware

    def build(with_mw: bool) -> Any:
        app = FastAPI()

        @app.get("/orders/{order_id}")
        async def order(order_id: int) -> dict[str, Any]:
            return {"order_id": order_id, "state": "shipped"}

        if with_mw:
            app.add_middleware(AnalyticsMiddleware, analytics=analytics)
        return app

    return asgi_runner(build(False), "/orders/7"), asgi_runner(build(True), "/orders/7")


FRAMEWORKS: dict[str, Callable[[Any], tuple[Runner, Runner]]] = {
    "plain WSGI": plain_wsgi,
    "Flask": flask_app,
    "Django (WSGI)": django_wsgi,
    "Django (ASGI)": django_asgi,
    "plain ASGI": plain_asgi,
    "Starlette": starlette_app,
    "FastAPI": fastapi_app,
}


class _Drain:
    """Empties the benchmark's ring between rounds (what the daemon would do)."""

    def __init__(self, rings_dir: Path) -> None:
        self.rings_dir = rings_dir
        self.readers: dict[Path, Any] = {}
        self.count = 0

    def __call__(self) -> int:
        import ringbuf

        for path in self.rings_dir.glob("*.ring"):
            if path not in self.readers:
                self.readers[path] = ringbuf.RingReader.open(path)
        for reader in self.readers.values():
            while batch := reader.read_batch(100_000):
                self.count += len(batch)
                reader.commit()
        return self.count

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


def _timed(run: Runner, n: int, drain: _Drain) -> float:
    drain()
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        run(n)
        return (time.perf_counter_ns() - t0) / n
    finally:
        gc.enable()


def _record_hit_runner(analytics: Any, record: dict[str, Any]) -> Runner:
    hit = analytics.record_hit

    def run(n: int) -> None:
        for _ in range(n):
            hit(dict(record))  # the middleware builds a new dict per request too
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench integrations", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (about 20 s)")
    ap.add_argument("--requests", type=int, default=None, help="requests per round")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per variant")
    ap.add_argument("--only", action="append", default=None, choices=sorted(FRAMEWORKS),
                    help="measure only this framework (repeatable)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    n = args.requests or (1000 if args.quick else 3000)
    rounds = args.rounds or (5 if args.quick else 15)
    sys.path.insert(0, str(ROOT))

    from collector import Analytics

    work = Path(tempfile.mkdtemp(prefix="bench-integrations-",
                                 dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    rings = work / "rings"
    rings.mkdir(mode=0o700)
    analytics = Analytics({"rings_dir": str(rings), "ring_capacity_bytes": 1 << 26}).start()
    drain = _Drain(rings)
    results: dict[str, Any] = {"machine": {"python": platform.python_version(),
                                           "cpus": os.cpu_count(),
                                           "platform": platform.platform()},
                               "requests_per_round": n, "rounds": rounds, "frameworks": {}}
    try:
        record = {"timestamp": time.time(), "method": "GET", "route": "/orders/{order_id}",
                  "path": "/orders/7", "status": 200, "duration_us": 123,
                  "request_bytes": 0, "response_bytes": 35, "client_addr": "127.0.0.1",
                  "user_id": None, "request_id": "bench-0123456789"}
        bare = _record_hit_runner(analytics, record)
        names = args.only or list(FRAMEWORKS)
        runners = {name: FRAMEWORKS[name](analytics) for name in names}
        print(f"middleware cost per request: python {platform.python_version()}, "
              f"{os.cpu_count()} cpus, {rounds} rounds x {n} requests per variant")
        for without, with_mw in runners.values():  # warm up (imports, caches)
            without(200)
            with_mw(200)
        bare(200)
        samples: dict[str, dict[str, list[float]]] = {
            name: {"without": [], "with": [], "record_hit": []} for name in runners}
        for i in range(rounds):
            for name, (without, with_mw) in runners.items():
                s = samples[name]
                order = [("without", without), ("with", with_mw), ("record_hit", bare)]
                for key, run in order if i % 2 == 0 else order[::-1]:  # no order effect
                    s[key].append(_timed(run, n, drain))
        drain()
        print(f"\n{'framework':<15} {'without':>10} {'with':>10} {'middleware':>11} "
              f"{'record_hit':>11} {'middleware':>11} {'with/':>7}")
        print(f"{'':<15} {'(ns/req)':>10} {'(ns/req)':>10} {'(with-w/o)':>11} "
              f"{'(bare, ns)':>11} {'minus r_h':>11} {'without':>7}")
        for name, s in samples.items():
            med = {k: statistics.median(v) for k, v in s.items()}
            cost = med["with"] - med["without"]
            row = {"without_ns": med["without"], "with_ns": med["with"],
                   "middleware_ns": cost, "record_hit_ns": med["record_hit"],
                   "middleware_minus_record_hit_ns": cost - med["record_hit"],
                   "ratio": med["with"] / med["without"]}
            results["frameworks"][name] = row
            print(f"{name:<15} {med['without']:>10,.0f} {med['with']:>10,.0f} {cost:>11,.0f} "
                  f"{med['record_hit']:>11,.0f} {cost - med['record_hit']:>11,.0f} "
                  f"{row['ratio']:>6.3f}x")
        print(f"\n{drain.count:,} records went through the ring "
              "(every measured request with the middleware, and the bare calls)")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    finally:
        drain.close()
        analytics.stop()
        shutil.rmtree(work, ignore_errors=True)
