"""The HTTP endpoints of the daemon and the pump, served from one thread.

``/<health_path>`` answers ``{"status": "ok"}`` while the process runs,
``/readyz`` answers the caller's readiness detail as JSON (503 when not
ready) and ``/metrics`` the Prometheus text of the caller's registry.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .redact import scrub

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """A ``ThreadingHTTPServer`` for the three endpoints; ``start``/``stop`` it."""

    def __init__(self, host: str, port: int, *, readiness: Readiness,
                 registry: CollectorRegistry, health_path: str = "/healthz",
                 on_error: Callable[[str, Exception], None] | None = None,
                 name: str = "collector-http") -> None:
        paths = [health_path, "/readyz", "/metrics"]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per request would flood the logs

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                body = scrub(body.decode()).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, obj: Any) -> None:
                self._send(code, json.dumps(obj).encode() + b"\n", "application/json")

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].rstrip("/") or "/"
                try:
                    if path == health_path:
                        self._json(200, {"status": "ok"})
                    elif path == "/readyz":
                        ready, detail = readiness()
                        self._json(200 if ready else 503, detail)
                    elif path == "/metrics":
                        self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                    else:
                        self._json(404, {"error": f"no such path {path!r}", "paths": paths})
                except Exception as exc:  # never kill the server thread
                    if on_error is not None:
                        on_error(path, exc)
                    try:
                        self._json(500, {"error": repr(exc)})
                    except OSError:
                        pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = Server((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2}, name=name, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        t0 = time.monotonic()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(max(0.0, 5 - (time.monotonic() - t0)))
