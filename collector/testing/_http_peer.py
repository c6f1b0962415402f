"""A loopback HTTP server for the ``http`` sink: told to answer 200, 4xx, 5xx or stall."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["HttpPeer"]


class HttpPeer:
    """``http.server`` in a thread, receiving the ``http`` sink's ``[{"id", "record"}]`` POSTs.

    ``mode`` is ``"ok"`` (200, the items are taken), ``"503"``, ``"400"``,
    ``"429"`` or ``"stall"`` (answer 503 only after :attr:`release` is set or
    30 s); a non-ok answer carries ``Retry-After: retry_after`` when that is
    set; ``fail_first = N`` answers the next N posts with 503 whatever the
    mode. ``GET`` (the sink's health URL) answers 200 in mode ok, else 503.

    Taken items are counted by their ``id`` in :attr:`ids` and handed to
    ``on_items`` (under the peer's lock); :attr:`requests` counts every
    POST, :attr:`rejected` the refused ones, :attr:`last_headers` are the
    last POST's headers.
    """

    def __init__(self, on_items: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.mode = "ok"
        self.retry_after: str | None = None
        self.fail_first = 0
        self.on_items = on_items
        self.ids: Counter[str] = Counter()
        self.requests = 0
        self.rejected = 0
        self.last_headers: dict[str, str] = {}
        self.release = threading.Event()
        self.lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(200 if peer.mode == "ok" else 503, b"{}")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with peer.lock:
                    peer.requests += 1
                    peer.last_headers = dict(self.headers)
                    mode = peer.mode
                    if peer.fail_first > 0:
                        peer.fail_first -= 1
                        mode = "503"
                    if mode == "ok":
                        items = json.loads(body)
                        peer.ids.update(item["id"] for item in items)
                        if peer.on_items is not None:
                            peer.on_items(items)
                    else:
                        peer.rejected += 1
                if mode == "stall":
                    peer.release.wait(30)
                    return self._answer(503, b"stalled")
                if mode == "ok":
                    return self._answer(200, b'{"ok": true}')
                extra = {"Retry-After": peer.retry_after} if peer.retry_after else {}
                return self._answer(int(mode), b"no", extra)

            def _answer(self, status: int, body: bytes, extra: dict[str, str] | None = None
                        ) -> None:
                try:
                    self.send_response(status)
                    for k, v in (extra or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (its deadline) or was killed

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed mid-request (a pump under kill -9) is expected

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True, name="http-peer")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def url(self) -> str:
        """Where the sink posts: ``http://127.0.0.1:PORT/ingest``."""
        return f"{self.base}/ingest"

    def accepted(self) -> int:
        """Items taken so far, copies included."""
        with self.lock:
            return sum(self.ids.values())

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
