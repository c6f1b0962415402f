"""The HTTP endpoints of the daemon and the pump, served from one thread.

``/<health_path>`` answers ``{"status": "ok"}`` while the process runs,
``/readyz`` answers the caller's readiness detail as JSON (503 when not
ready) and ``/metrics`` the Prometheus text of the caller's registry.

Clients cannot exhaust it (nor the process's file descriptors): one asyncio
event loop in one thread serves every connection, one ``GET`` per connection
(``Connection: close``). Connections are accepted one at a time and at most
:data:`MAX_CONNECTIONS` are open at once: a new one closes the oldest that
has not sent its request yet (the rest wait in the kernel's queue), so idle
connections cost nothing and a real client always gets its answer. A
request must arrive whole (at most :data:`MAX_REQUEST_BYTES`) within
:data:`READ_TIMEOUT_S`. Readiness and metrics are computed on a pool of
:data:`WORKERS` threads, not in the loop. A client that goes away is
nobody's business: no log line. The endpoints carry no authentication:
they listen on a loopback address unless ``health_allow_remote`` says
otherwise (:mod:`collector.common.service`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .redact import scrub

Readiness = Callable[[], tuple[bool, dict[str, Any]]]

MAX_CONNECTIONS = 64
READ_TIMEOUT_S = 2.0
WRITE_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192
WORKERS = 2
BACKLOG = 1024

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


class HealthServer:
    """The three endpoints on ``host:port`` (bound at once; port 0 picks one);
    ``start``/``stop`` it."""

    def __init__(self, host: str, port: int, *, readiness: Readiness,
                 registry: CollectorRegistry, health_path: str = "/healthz",
                 on_error: Callable[[str, Exception], None] | None = None,
                 name: str = "collector-http") -> None:
        self.health_path = health_path
        self.paths = [health_path, "/readyz", "/metrics"]
        self.readiness = readiness
        self.registry = registry
        self.on_error = on_error
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
        self.sock.setblocking(False)
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_quiet)
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix=f"{name}-worker")
        # connections that have not sent their request yet, oldest first
        self.waiting: OrderedDict[asyncio.Task[None], None] = OrderedDict()
        self.open = 0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        t0 = time.monotonic()
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(max(0.0, 5 - (time.monotonic() - t0)))
        else:
            self.sock.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- the loop's thread ---------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._ready.set()
            self.loop.run_until_complete(self._accept())
        except RuntimeError:  # the loop was stopped (stop())
            pass
        finally:
            self._ready.set()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.sleep(0))
            self.sock.close()
            self.loop.close()

    async def _accept(self) -> None:
        """Accept one connection at a time, so that no more than MAX_CONNECTIONS
        (and the one being closed) hold a descriptor, however many clients queue."""
        while True:
            try:
                conn, _ = await self.loop.sock_accept(self.sock)
            except OSError:  # EMFILE and the like: the process is short; try again soon
                await asyncio.sleep(0.05)
                continue
            if self.open >= MAX_CONNECTIONS and self.waiting:
                oldest, _ = self.waiting.popitem(last=False)
                oldest.cancel()  # it has not sent its request: closed for this one
            self.open += 1
            held: list[asyncio.StreamWriter] = []
            task = self.loop.create_task(self._serve(conn, held))
            task.add_done_callback(lambda _t, c=conn, h=held: self._closed(c, h))
            self.waiting[task] = None
            await asyncio.sleep(0)  # let the cancelled one close before the next accept

    def _closed(self, conn: socket.socket, held: list[asyncio.StreamWriter]) -> None:
        self.open -= 1
        if held:  # the transport owns the socket: close it, unless a close is flushing
            if not held[0].transport.is_closing():
                held[0].transport.abort()
        else:
            conn.close()

    async def _serve(self, conn: socket.socket, held: list[asyncio.StreamWriter]) -> None:
        task = asyncio.current_task()
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_REQUEST_BYTES)
            held.append(writer)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            finally:
                self.waiting.pop(task, None)  # type: ignore[arg-type]
            code, body, ctype = await self._answer(head)
            writer.write(_response(code, body, ctype))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
            writer.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or was too slow: nothing to say about it

    async def _answer(self, head: bytes) -> tuple[int, bytes, str]:
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _json(400, {"error": "not an HTTP request"})
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0].rstrip("/") or "/"
        if method != "GET":
            return _json(405, {"error": f"method {method[:16]!r} not allowed; use GET"})
        if path == self.health_path:
            return _json(200, {"status": "ok"})
        if path not in ("/readyz", "/metrics"):
            return _json(404, {"error": f"no such path {path[:200]!r}", "paths": self.paths})
        try:
            return await self.loop.run_in_executor(self.pool, self._compute, path)
        except Exception as exc:  # never kill the server
            if self.on_error is not None:
                self.on_error(path, exc)
            return _json(500, {"error": repr(exc)})

    def _compute(self, path: str) -> tuple[int, bytes, str]:
        if path == "/readyz":
            ready, detail = self.readiness()
            return _json(200 if ready else 503, detail)
        return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST


def _json(code: int, obj: Any) -> tuple[int, bytes, str]:
    return code, json.dumps(obj).encode() + b"\n", "application/json"


def _response(code: int, body: bytes, ctype: str) -> bytes:
    body = scrub(body.decode()).encode()
    head = (f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def _quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: a client's socket errors are not news."""
    if isinstance(context.get("exception"), OSError | asyncio.CancelledError):
        return
    loop.default_exception_handler(context)
