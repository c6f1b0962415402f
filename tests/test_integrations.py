"""The middlewares in-process: what each records, options, add_fields, never raising.

Real parts: a real ``collector.Analytics`` writing into its own ring in a
private rings directory, read back with ``ringbuf.RingReader`` (what the
daemon does, minus Redis), so the record checked is the one ``record_hit``
encoded. The apps are real WSGI/ASGI callables, Flask, Starlette, FastAPI
and the example Django project, driven through their own entry points
(the WSGI call and ``close()``, the ASGI ``scope/receive/send``, Django's
``WSGIHandler``/``ASGIHandler``), not through a framework's test client.
The full path (daemon, Redis, pump, sink) under gunicorn is in
``tests/test_integrations_gunicorn.py``; the examples' own tests use the
pytest plugin's fixtures in-process (``examples/test_examples.py``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

import ringbuf
from collector import Analytics, ConfigError
from collector.integrations import (
    ALL_FIELDS,
    DEFAULT_FIELDS,
    add_fields,
    current_fields,
)
from collector.integrations.asgi import AnalyticsMiddleware as ASGIMiddleware
from collector.integrations.wsgi import ROUTE_KEY
from collector.integrations.wsgi import AnalyticsMiddleware as WSGIMiddleware
from collector.testing import in_threads

ROOT = Path(__file__).resolve().parent.parent


class Ring:
    """A private client and what it wrote, read back from its ring files."""

    def __init__(self, rings_dir: Path, **cfg: Any) -> None:
        self.rings_dir = rings_dir
        self.analytics = Analytics({"rings_dir": str(rings_dir),
                                    "ring_capacity_bytes": 1 << 20, **cfg})

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path in sorted(self.rings_dir.glob("*.ring")):
            with ringbuf.RingReader.open(path) as reader:
                while batch := reader.read_batch(10_000):
                    out.extend(msgpack.unpackb(b) for b in batch)
                    reader.commit()
        return out


@pytest.fixture
def ring(rings_dir: Path) -> Iterator[Ring]:
    r = Ring(rings_dir)
    yield r
    r.analytics.stop()


# -- WSGI ---------------------------------------------------------------------
def environ(path: str = "/", method: str = "GET", body: bytes = b"",
            headers: dict[str, str] | None = None, chunked: bool = False,
            peer: str = "127.0.0.1") -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "test", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": peer, "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr, "wsgi.version": (1, 0), "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    if body and not chunked:
        env["CONTENT_LENGTH"] = str(len(body))
    if chunked:
        env["HTTP_TRANSFER_ENCODING"] = "chunked"
    for k, v in (headers or {}).items():
        env["HTTP_" + k.upper().replace("-", "_")] = v
    return env


def call_wsgi(app: Any, env: dict[str, Any]) -> tuple[str, bytes]:
    """What a PEP 3333 server does: call, iterate, close."""
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                       ) -> Any:
        got["status"] = status
        return lambda data: got.setdefault("written", []).append(data)

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return got["status"], b"".join(got.get("written", [])) + body


def demo_wsgi(env: dict[str, Any], start_response: Any) -> Any:
    path = env["PATH_INFO"]
    if path.startswith("/orders/"):
        env[ROUTE_KEY] = "/orders/{id}"
        add_fields(order=int(path.rsplit("/", 1)[1]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"order ", path.encode()]
    if path == "/upload":
        data = env["wsgi.input"].read()
        start_response("201 Created", [])
        return [b"got %d" % len(data)]
    if path == "/stream":
        def gen() -> Iterator[bytes]:
            for i in range(3):
                time.sleep(0.01)
                add_fields(chunks=i + 1)  # still inside the request
                yield b"x" * 100
        start_response("200 OK", [])
        return gen()
    if path == "/write":
        write = start_response("200 OK", [])
        write(b"legacy-")
        return [b"body"]
    if path == "/boom":
        raise RuntimeError("boom")
    start_response("404 Not Found", [])
    return [b"nope"]


def test_wsgi_records_one_record_per_request(ring: Ring) -> None:
    app = WSGIMiddleware(demo_wsgi, ring.analytics)
    assert call_wsgi(app, environ("/orders/7", headers={"X-Request-ID": "r-1"}))[0] == "200 OK"
    call_wsgi(app, environ("/upload", "POST", b"a" * 300))
    call_wsgi(app, environ("/upload", "POST", b"b" * 123, chunked=True))
    _, body = call_wsgi(app, environ("/stream"))
    assert body == b"x" * 300
    assert call_wsgi(app, environ("/write"))[1] == b"legacy-body"
    call_wsgi(app, environ("/missing"))
    with pytest.raises(RuntimeError):
        call_wsgi(app, environ("/boom"))
    recs = ring.records()
    assert [r["path"] for r in recs] == ["/orders/7", "/upload", "/upload", "/stream",
                                         "/write", "/missing", "/boom"]
    order, upload, chunked, stream, write, missing, boom = recs
    assert list(order)[:len(DEFAULT_FIELDS)] == list(DEFAULT_FIELDS)
    assert order["method"] == "GET" and order["route"] == "/orders/{id}"
    assert order["status"] == 200 and order["order"] == 7 and order["request_id"] == "r-1"
    assert order["response_bytes"] == len(b"order /orders/7")
    assert order["client_addr"] == "127.0.0.1" and order["user_id"] is None
    assert abs(order["timestamp"] - time.time()) < 60
    assert (upload["status"], upload["request_bytes"], upload["method"]) == (201, 300, "POST")
    assert chunked["request_bytes"] == 123  # counted as the app read it
    # timed to the last byte of the streamed body; fields added while streaming count
    assert stream["response_bytes"] == 300 and stream["duration_us"] >= 30_000
    assert stream["chunks"] == 3
    assert write["response_bytes"] == len(b"legacy-body")
    assert (missing["status"], missing["route"]) == (404, None)
    assert (boom["status"], boom["route"]) == (500, None)
    assert current_fields() is None  # nothing leaks out of a request


def test_skip_paths_and_sampling(ring: Ring) -> None:
    app = WSGIMiddleware(demo_wsgi, ring.analytics, skip_paths=["/healthz", "/static/*"])
    for path in ("/healthz", "/static/app.js", "/static/", "/orders/1", "/healthz/x"):
        call_wsgi(app, environ(path))
    assert [r["path"] for r in ring.records()] == ["/orders/1", "/healthz/x"]

    none = WSGIMiddleware(demo_wsgi, ring.analytics, sample_rate=0.0)
    half = WSGIMiddleware(demo_wsgi, ring.analytics, sample_rate=0.5)
    draws = iter([0.1, 0.9, 0.49, 0.5, 0.7, 0.2])
    half.recorder._random = lambda: next(draws)  # the decision, made visible
    for i in range(6):
        call_wsgi(none, environ(f"/orders/{i}"))
        call_wsgi(half, environ(f"/orders/{i}"))
    assert [r["order"] for r in ring.records()] == [0, 2, 5]
    with pytest.raises(ValueError, match="sample_rate"):
        WSGIMiddleware(demo_wsgi, ring.analytics, sample_rate=1.5)


def test_fields_extra_builder_and_user_hook(ring: Ring) -> None:
    few = WSGIMiddleware(demo_wsgi, ring.analytics, fields=["method", "status", "pid"],
                         extra={"service": "shop"})
    call_wsgi(few, environ("/orders/3"))
    [rec] = ring.records()
    assert rec == {"method": "GET", "status": 200, "pid": os.getpid(), "service": "shop",
                   "order": 3}

    def builder(record: dict[str, Any], env: dict[str, Any]) -> dict[str, Any] | None:
        if record["status"] == 404:
            return None  # not worth a record
        return {"what": f"{record['method']} {record['route']}", "ua": env.get("HTTP_UA")}

    built = WSGIMiddleware(demo_wsgi, ring.analytics, record_builder=builder)
    call_wsgi(built, environ("/orders/4", headers={"UA": "curl"}))
    call_wsgi(built, environ("/missing"))
    assert ring.records() == [{"what": "GET /orders/{id}", "ua": "curl"}]

    users = iter(["u-1", RuntimeError("no session store")])

    def user_id(env: dict[str, Any]) -> Any:
        u = next(users)
        if isinstance(u, Exception):
            raise u
        return u

    hooked = WSGIMiddleware(demo_wsgi, ring.analytics, user_id=user_id)
    call_wsgi(hooked, environ("/orders/5"))
    call_wsgi(hooked, environ("/orders/6"))
    assert [r["user_id"] for r in ring.records()] == ["u-1", None]
    assert hooked.stats() == {"dropped": 0, "errors": 0, "hook_errors": 1}
    with pytest.raises(ValueError, match="unknown record fields"):
        WSGIMiddleware(demo_wsgi, ring.analytics, fields=["method", "nope"])
    with pytest.raises(TypeError, match="unknown middleware options"):
        WSGIMiddleware(demo_wsgi, ring.analytics, sample=0.5)
    assert set(ALL_FIELDS) == {*DEFAULT_FIELDS, "pid"}


def test_client_address_from_a_trusted_proxy_header_only(ring: Ring) -> None:
    plain = WSGIMiddleware(demo_wsgi, ring.analytics)
    proxied = WSGIMiddleware(demo_wsgi, ring.analytics, client_ip_header="X-Forwarded-For")
    two_hops = WSGIMiddleware(demo_wsgi, ring.analytics, client_ip_header="X-Forwarded-For",
                              trusted_hops=2, trusted_proxies=["10.0.0.0/8"])
    xff = {"X-Forwarded-For": "198.51.100.7, 192.0.2.1"}
    call_wsgi(plain, environ("/orders/1", headers=xff))  # not configured: ignored
    call_wsgi(proxied, environ("/orders/2", headers=xff))  # the entry its proxy appended
    call_wsgi(proxied, environ("/orders/3", headers=xff, peer="203.0.113.5"))  # untrusted peer
    call_wsgi(proxied, environ("/orders/4", headers={"X-Forwarded-For": "not-an-ip"}))
    call_wsgi(two_hops, environ("/orders/5", headers=xff, peer="10.1.2.3"))
    call_wsgi(proxied, environ("/orders/6", headers={"X-Request-ID": "r" * 500}))
    recs = ring.records()
    assert [r["client_addr"] for r in recs] == [
        "127.0.0.1", "192.0.2.1", "203.0.113.5", "127.0.0.1", "198.51.100.7", "127.0.0.1"]
    assert recs[-1]["request_id"] == "r" * 128


def test_never_raises_into_the_app(rings_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unencodable field, an oversize record and a full ring: counted, logged once."""
    small = Ring(rings_dir, ring_capacity_bytes=4096, max_record_bytes=1024)

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        kind = env["PATH_INFO"]
        if kind == "/unencodable":
            add_fields(handle=object())
        elif kind == "/oversize":
            add_fields(blob="x" * 5000)
        else:
            add_fields(pad="p" * 300)
        start_response("200 OK", [])
        return [b"fine"]

    mw = WSGIMiddleware(app, small.analytics)
    caplog.set_level(logging.WARNING, logger="collector.integrations")
    assert call_wsgi(mw, environ("/unencodable")) == ("200 OK", b"fine")
    assert call_wsgi(mw, environ("/oversize")) == ("200 OK", b"fine")
    for _ in range(40):  # nobody drains this ring: it fills up
        assert call_wsgi(mw, environ("/fill")) == ("200 OK", b"fine")
    stats = mw.stats()
    assert stats["errors"] == 2
    assert stats["dropped"] > 20
    assert stats["dropped"] + len(small.records()) == 40
    lines = [r for r in caplog.records if r.name == "collector.integrations"]
    assert len(lines) == 2, [r.getMessage() for r in lines]  # one per kind, not per record
    assert [r.kv["kind"] for r in lines] == ["errors", "dropped"]  # type: ignore[attr-defined]
    assert lines[0].kv["total"] == 1 and "record" in lines[0].getMessage()  # type: ignore[attr-defined]
    small.analytics.stop()


def test_add_fields_is_per_request_across_threads(ring: Ring) -> None:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        rid = env["HTTP_X_REQUEST_ID"]
        add_fields(mine=rid)
        time.sleep(0.001)  # let the other threads interleave
        add_fields(again=rid)
        start_response("200 OK", [])
        return [b"ok"]

    mw = WSGIMiddleware(app, ring.analytics)
    assert add_fields(outside=True) is False

    def client(t: int) -> None:
        for i in range(25):
            call_wsgi(mw, environ("/", headers={"X-Request-ID": f"{t}-{i}"}))

    in_threads(client, 8, timeout=60)
    recs = ring.records()
    assert len(recs) == 200
    assert all(r["mine"] == r["again"] == r["request_id"] for r in recs)
    assert len({r["request_id"] for r in recs}) == 200  # one ring, shared behind its lock
    assert len(list(ring.rings_dir.glob("*.ring"))) == 1


# -- ASGI ---------------------------------------------------------------------
def http_scope(path: str, method: str = "GET", headers: dict[str, str] | None = None,
               kind: str = "http") -> dict[str, Any]:
    return {"type": kind, "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}


async def call_asgi(app: Any, scope: dict[str, Any], body: bytes = b"",
                    incoming: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A server: feed ``body`` (or ``incoming`` messages), collect what the app sends."""
    sent: list[dict[str, Any]] = []
    queue = list(incoming) if incoming is not None else [
        {"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def demo_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        return
    path = scope["path"]
    if scope["type"] == "websocket":
        msg = await receive()
        assert msg["type"] == "websocket.connect"
        if path == "/ws/refuse":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        while (msg := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": msg.get("text"),
                        "bytes": msg.get("bytes")})
        return
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/upload":
        size = 0
        while True:
            msg = await receive()
            size += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % size})
        return
    rid = dict(scope["headers"]).get(b"x-request-id", b"").decode()
    add_fields(task_field=rid)

    async def child() -> None:  # a task the handler starts shares the request's fields
        await asyncio.sleep(0.001)
        add_fields(child_field=rid)

    await asyncio.create_task(child())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(3):
        await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"y" * 10, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    if path == "/background":
        await asyncio.sleep(0.5)  # after the last byte: not part of the duration


def test_asgi_http_records(ring: Ring) -> None:
    app = ASGIMiddleware(demo_asgi, ring.analytics)

    async def main() -> None:
        await call_asgi(app, http_scope("/stream", headers={"X-Request-ID": "a-1"}))
        await call_asgi(app, http_scope("/background"))
        await call_asgi(app, http_scope("/upload", "POST"), incoming=[
            {"type": "http.request", "body": b"a" * 70, "more_body": True},
            {"type": "http.request", "body": b"b" * 30, "more_body": False}])
        with pytest.raises(RuntimeError):
            await call_asgi(app, http_scope("/boom"))
        await call_asgi(app, {"type": "lifespan", "asgi": {"version": "3.0"}},
                        incoming=[{"type": "lifespan.startup"}])

    asyncio.run(main())
    stream, background, upload, boom = ring.records()
    assert (stream["status"], stream["response_bytes"], stream["request_id"]) == (200, 30, "a-1")
    assert stream["duration_us"] >= 30_000  # to the last body message
    assert stream["task_field"] == stream["child_field"] == "a-1"
    assert background["duration_us"] < 500_000  # the work after the last byte is not in it
    assert (upload["status"], upload["request_bytes"], upload["method"]) == (201, 100, "POST")
    assert (boom["status"], boom["response_bytes"]) == (500, 0)


def test_asgi_websocket_records(ring: Ring) -> None:
    app = ASGIMiddleware(demo_asgi, ring.analytics)

    async def main() -> None:
        await call_asgi(app, http_scope("/ws/echo", kind="websocket"), incoming=[
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "héllo"},
            {"type": "websocket.receive", "bytes": b"\x00\x01\x02"},
            {"type": "websocket.disconnect", "code": 1000}])
        await call_asgi(app, http_scope("/ws/refuse", kind="websocket"),
                        incoming=[{"type": "websocket.connect"}])

    asyncio.run(main())
    echo, refused = ring.records()
    assert (echo["method"], echo["status"]) == ("WEBSOCKET", 101)
    assert echo["request_bytes"] == echo["response_bytes"] == len("héllo".encode()) + 3
    assert (refused["status"], refused["response_bytes"]) == (403, 0)


def test_add_fields_is_per_request_across_asyncio_tasks(ring: Ring) -> None:
    app = ASGIMiddleware(demo_asgi, ring.analytics)

    async def main() -> None:
        await asyncio.gather(*(
            call_asgi(app, http_scope("/x", headers={"X-Request-ID": f"t-{i}"}))
            for i in range(50)))

    asyncio.run(main())
    recs = ring.records()
    assert len(recs) == 50
    assert all(r["task_field"] == r["child_field"] == r["request_id"] for r in recs)


def test_asgi_refuses_the_block_policy(rings_dir: Path,
                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocking = Analytics({"rings_dir": str(rings_dir), "full_policy": "block"})
    with pytest.raises(ConfigError, match="full_policy: block cannot be used with an ASGI app"):
        ASGIMiddleware(demo_asgi, blocking)
    cfg = tmp_path / "block.yaml"
    cfg.write_text(f"rings_dir: {rings_dir}\nfull_policy: block\n")
    monkeypatch.setenv("COLLECTOR_CONFIG", str(cfg))  # the shared client's config
    with pytest.raises(ConfigError, match="stalls every request"):
        ASGIMiddleware(demo_asgi)
    WSGIMiddleware(demo_wsgi)  # a WSGI worker thread may wait for room


def test_starlette_and_fastapi_route_templates(ring: Ring) -> None:
    from fastapi import FastAPI
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route, WebSocketRoute

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    async def ws(websocket: Any) -> None:
        await websocket.accept()
        await websocket.close()

    api = FastAPI()

    @api.get("/users/{user_id}/orders/{order_id}")
    async def order(user_id: int, order_id: int) -> dict[str, int]:
        return {"user_id": user_id}

    app = Starlette(routes=[
        Route("/hello/{name}", hello), WebSocketRoute("/ws/{room}", ws),
        Mount("/v1", routes=[Route("/items/{item_id:int}", hello)]),
        Mount("/api", app=api),
    ])
    app.add_middleware(ASGIMiddleware, analytics=ring.analytics)

    async def main() -> None:
        for path in ("/hello/bob", "/v1/items/3", "/api/users/1/orders/2", "/nowhere"):
            await call_asgi(app, http_scope(path))
        await call_asgi(app, http_scope("/ws/lobby", kind="websocket"), incoming=[
            {"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}])

    asyncio.run(main())
    assert [(r["path"], r["route"], r["status"]) for r in ring.records()] == [
        ("/hello/bob", "/hello/{name}", 200),
        ("/v1/items/3", "/v1/items/{item_id}", 200),
        ("/api/users/1/orders/2", "/api/users/{user_id}/orders/{order_id}", 200),
        ("/nowhere", None, 404),
        ("/ws/lobby", "/ws/{room}", 101),
    ]


# -- Django ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def django_shop() -> Any:
    sys.path.insert(0, str(ROOT / "examples" / "django_project"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    import django

    django.setup()
    return django


def test_django_wsgi_and_asgi(django_shop: Any, ring: Ring,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    from collector.integrations import _recorder

    monkeypatch.setattr(_recorder, "_default", ring.analytics)  # the shared client, private here
    wsgi = WSGIHandler()
    call_wsgi(wsgi, environ("/orders/5", headers={"X-Request-ID": "d-1", "Host": "localhost"}))
    _, body = call_wsgi(wsgi, environ("/report", headers={"Host": "localhost"}))
    call_wsgi(wsgi, environ("/orders", "POST", b'{"items": [1, 2, 3]}',
                            headers={"Host": "localhost"}))
    call_wsgi(wsgi, environ("/nope", headers={"Host": "localhost"}))
    call_wsgi(wsgi, environ("/healthz", headers={"Host": "localhost"}))  # skipped by settings

    asgi = ASGIHandler()

    async def main() -> None:
        for path in ("/orders/6", "/slow-async", "/report"):
            await call_asgi(asgi, http_scope(path, headers={"Host": "localhost"}))

    asyncio.run(main())
    recs = ring.records()
    assert [(r["path"], r["route"], r["status"]) for r in recs] == [
        ("/orders/5", "/orders/<int:order_id>", 200),
        ("/report", "/report", 200),
        ("/orders", "/orders", 201),
        ("/nope", None, 404),
        ("/orders/6", "/orders/<int:order_id>", 200),
        ("/slow-async", "/slow-async", 200),
        ("/report", "/report", 200),
    ]
    w_order, w_report, w_post, _, a_order, a_slow, a_report = recs
    assert w_order["order_id"] == 5 and w_order["request_id"] == "d-1"
    assert w_report["response_bytes"] == len(body) == len("order_id,state\n") + sum(
        len(f"{i},shipped\n") for i in range(100))
    assert (w_post["request_bytes"], w_post["items"]) == (20, 3)
    assert a_order["order_id"] == 6 and a_slow["kind"] == "async"
    assert a_report["response_bytes"] == w_report["response_bytes"]
    assert all(r["user_id"] is None for r in recs)  # no auth app: no user loaded


# -- packaging ------------------------------------------------------------------
def test_each_module_imports_only_its_own_framework() -> None:
    frameworks = ("django", "flask", "starlette", "fastapi", "werkzeug")
    checks = {
        "collector.integrations": (),
        "collector.integrations.wsgi": (),
        "collector.integrations.asgi": (),
        "collector.integrations.flask": ("flask", "werkzeug"),
        "collector.integrations.django": ("django",),
    }
    for module, allowed in checks.items():
        code = (f"import sys, {module}; "
                f"print(sorted(m for m in {frameworks!r} if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout.strip()
        assert set(eval(out)) <= set(allowed), (module, out)


def test_event_loop_workers_are_recognised() -> None:
    from gunicorn.workers.ggevent import GeventWorker
    from gunicorn.workers.gthread import ThreadWorker
    from gunicorn.workers.sync import SyncWorker
    from uvicorn.workers import UvicornWorker

    from collector.gunicorn import event_loop_worker

    kinds = {cls.__name__: event_loop_worker(object.__new__(cls))
             for cls in (SyncWorker, ThreadWorker, GeventWorker, UvicornWorker)}
    assert kinds["SyncWorker"] is None and kinds["ThreadWorker"] is None
    assert kinds["GeventWorker"] and kinds["UvicornWorker"]


def test_file_wrapper_bodies_pass_through_and_flask_is_instrumented_once(ring: Ring) -> None:
    """A ``wsgi.file_wrapper`` body is handed back untouched (the server may sendfile it)."""
    from flask import Flask

    from collector.integrations.flask import instrument

    class FileWrapper:  # what a server puts in environ["wsgi.file_wrapper"]
        def __init__(self, f: Any, block: int = 8192) -> None:
            self.f = f

        def __iter__(self) -> Iterator[bytes]:
            return iter(lambda: self.f.read(4), b"")

    def app(env: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", "10")])
        return env["wsgi.file_wrapper"](io.BytesIO(b"0123456789"))

    env = environ("/download")
    env["wsgi.file_wrapper"] = FileWrapper
    result = WSGIMiddleware(app, ring.analytics)(env, lambda *a: None)
    assert type(result) is FileWrapper and b"".join(result) == b"0123456789"
    [rec] = ring.records()
    assert (rec["path"], rec["status"], rec["response_bytes"]) == ("/download", 200, 10)

    flask = Flask("once")
    instrument(flask, ring.analytics)
    with pytest.raises(RuntimeError, match="already called"):
        instrument(flask, ring.analytics)
