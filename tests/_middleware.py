"""What the middleware tests share: a private client read back from its ring, and
WSGI/ASGI servers and demo apps in a few lines.

Real parts: a real ``collector.Analytics`` writing into its own ring in a
private rings directory, read back with ``ringbuf.RingReader`` (what the
daemon does, minus Redis), so the record checked is the one ``record_hit``
encoded. The apps are real WSGI/ASGI callables driven through their own
entry points (the WSGI call and ``close()``, the ASGI ``scope/receive/send``).
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

import ringbuf
from collector import Analytics
from collector.integrations import (
    add_fields,
)
from collector.integrations.wsgi import ROUTE_KEY


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
