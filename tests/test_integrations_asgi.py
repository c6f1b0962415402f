"""The ASGI middleware in-process: HTTP and WebSocket scopes, streaming responses
timed to the last byte, add_fields across asyncio tasks, Starlette and FastAPI
route templates.

Real parts as in ``tests/_middleware.py``: a real client's ring read back,
real Starlette and FastAPI apps driven through ``scope/receive/send``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from collector import Analytics, ConfigError
from collector.integrations.asgi import AnalyticsMiddleware as ASGIMiddleware
from collector.integrations.wsgi import AnalyticsMiddleware as WSGIMiddleware
from tests._middleware import (
    Ring,
    call_asgi,
    demo_asgi,
    demo_wsgi,
    http_scope,
)


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
