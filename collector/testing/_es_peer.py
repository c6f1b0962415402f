"""``EsPeer``: a wire-level Elasticsearch peer for the elasticsearch sink's tests.

No Elasticsearch or OpenSearch server can be installed on this machine, so
the real ``elasticsearch`` client is tested against this small HTTP server
speaking the parts of the REST API the sink uses, in the formats the
Elasticsearch reference gives: ``GET /`` (cluster info) and ``POST /_bulk``
or ``/<index>/_bulk`` (NDJSON action and source lines; ``index``,
``create`` and ``delete``; a response with ``took``, ``errors`` and one
item per action, each with ``_index``, ``_id``, ``_version``, ``result``,
``status`` and, when it failed, ``error.type`` and ``error.reason``).
Every response carries ``X-Elastic-Product: Elasticsearch``, which the
client checks.

What it models, honestly and no more: documents by index and ``_id`` (an
``index`` of a known id replaces it: ``result: updated``); dynamic mapping
of top-level fields by their first value (``long``/``float``, ``boolean``,
``object``, ``text``): a later value that does not fit (text in a number
field) is a ``document_parsing_exception`` (400) for that item alone;
index names must be lowercase (``invalid_index_name_exception``); basic or
API key authentication (401 ``security_exception`` otherwise). Faults on
demand: ``reject_requests`` answers the next bulk requests 429
(``es_rejected_execution_exception``), ``reject_items`` the next items 429
each, ``stall`` holds bulk requests until set free. ``stop()`` and
``start()`` again keep the documents and the port: an outage and a restart.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._wait import free_port

__all__ = ["EsPeer"]

_INFO = {"name": "es-peer", "cluster_name": "collector-test", "cluster_uuid": "c0ll3ct0r",
         "version": {"number": "9.1.0", "build_flavor": "default", "build_type": "tar",
                     "lucene_version": "10.2.2", "minimum_wire_compatibility_version": "8.19.0",
                     "minimum_index_compatibility_version": "8.0.0"},
         "tagline": "You Know, for Search"}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "float"
    if isinstance(value, dict):
        return "object"
    return "text"


def _fits(kind: str, value: Any) -> bool:
    if value is None or isinstance(value, list):
        return True
    if kind in ("long", "float"):
        if isinstance(value, bool) or isinstance(value, dict):
            return False
        try:
            float(value)  # Elasticsearch coerces numeric strings
            return True
        except (TypeError, ValueError):
            return False
    if kind == "boolean":
        return isinstance(value, bool) or value in ("true", "false")
    if kind == "object":
        return isinstance(value, dict)
    return not isinstance(value, dict)


class EsPeer:
    """The peer (module docstring). ``docs[index][id]`` are the stored sources;
    ``applied`` counts index operations by id; ``pipelines`` documents by the
    ingest pipeline their action named; ``requests`` the bulk requests' (path,
    query, Authorization header)."""

    def __init__(self, *, api_key: str | None = None,
                 basic: tuple[str, str] | None = None, keep_sources: bool = True) -> None:
        self.port = free_port()
        self.keep_sources = keep_sources  # False: store ids only (benchmarks)
        self.api_key = api_key
        self.basic = basic
        self.docs: dict[str, dict[str, dict[str, Any]]] = {}
        self.mappings: dict[str, dict[str, str]] = {}
        self.applied: Counter[str] = Counter()
        self.pipelines: Counter[str] = Counter()  # documents by the ingest pipeline named
        self.requests: list[tuple[str, dict[str, list[str]], str]] = []
        self.reject_requests = 0
        self.reject_items = 0
        self.stall = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._conns: set[socket.socket] = set()
        self._seq = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ids(self) -> Counter[str]:
        """Stored document ids over every index (each at most once per index)."""
        return Counter(i for docs in self.docs.values() for i in docs)

    def start(self) -> EsPeer:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers and body in one send (flushed per request)
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                peer._conns.add(self.connection)

            def finish(self) -> None:
                peer._conns.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                peer._handle(self, "GET")

            def do_HEAD(self) -> None:
                peer._handle(self, "HEAD")

            def do_POST(self) -> None:
                peer._handle(self, "POST")

            def do_PUT(self) -> None:
                peer._handle(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True,
                         name="es-peer").start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        self.release.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        for conn in list(self._conns):  # kept-alive connections end too: a real outage
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.release.clear()

    def __enter__(self) -> EsPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the wire ----------------------------------------------------------------
    def _authorized(self, header: str) -> bool:
        if self.api_key is None and self.basic is None:
            return True
        if self.api_key is not None and header == f"ApiKey {self.api_key}":
            return True
        if self.basic is not None:
            token = base64.b64encode(":".join(self.basic).encode()).decode()
            return header == f"Basic {token}"
        return False

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else b""
        url = urlsplit(h.path)
        query = parse_qs(url.query)
        auth = h.headers.get("Authorization", "")
        if not self._authorized(auth):
            return self._send(h, 401, {"error": {"type": "security_exception",
                                                 "reason": "missing authentication credentials"},
                                       "status": 401}, method)
        parts = [p for p in url.path.split("/") if p]
        if method in ("GET", "HEAD") and not parts:
            return self._send(h, 200, _INFO, method)
        if method in ("POST", "PUT") and parts and parts[-1] == "_bulk" and len(parts) <= 2:
            self.requests.append((url.path, query, auth))
            if self.stall.is_set():
                self.release.wait(30)
            with self.lock:
                if self.reject_requests > 0:
                    self.reject_requests -= 1
                    reason = "rejected execution of coordinating operation [bulk]"
                    return self._send(h, 429, {"error": {
                        "root_cause": [{"type": "es_rejected_execution_exception",
                                        "reason": reason}],
                        "type": "es_rejected_execution_exception", "reason": reason},
                        "status": 429}, method)
                answer = self._bulk(body, parts[0] if len(parts) == 2 else None)
            return self._send(h, 200, answer, method)
        return self._send(h, 404, {"error": {"type": "no_handler_found_exception",
                                             "reason": f"no handler for {method} {url.path}"},
                                   "status": 404}, method)

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: Any, method: str) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("X-Elastic-Product", "Elasticsearch")
        h.send_header("Content-Type", "application/vnd.elasticsearch+json;compatible-with=9")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if method != "HEAD":
            try:
                h.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                h.close_connection = True

    def _bulk(self, body: bytes, default_index: str | None) -> dict[str, Any]:
        started = time.monotonic()
        lines = [line for line in body.split(b"\n") if line.strip()]
        items: list[dict[str, Any]] = []
        i = 0
        while i < len(lines):
            ((op, meta),) = json.loads(lines[i]).items()
            i += 1
            source = None
            if op != "delete":
                source = json.loads(lines[i])
                i += 1
            index = meta.get("_index", default_index)
            if "pipeline" in meta:
                self.pipelines[meta["pipeline"]] += 1
            doc_id = str(meta.get("_id"))
            items.append({op: self._item(op, index, doc_id, source)})
        took = int((time.monotonic() - started) * 1000)
        return {"took": took, "errors": any(next(iter(it.values()))["status"] >= 300
                                            for it in items), "items": items}

    def _item(self, op: str, index: str | None, doc_id: str, source: Any) -> dict[str, Any]:
        head: dict[str, Any] = {"_index": index, "_id": doc_id}

        def fail(status: int, kind: str, reason: str) -> dict[str, Any]:
            return {**head, "status": status, "error": {"type": kind, "reason": reason}}

        if self.reject_items > 0:
            self.reject_items -= 1
            return fail(429, "es_rejected_execution_exception",
                        "rejected execution of primary operation")
        if not index or index != index.lower() or index.startswith(("_", "-", "+")):
            return fail(400, "invalid_index_name_exception",
                        f"Invalid index name [{index}], must be lowercase")
        docs = self.docs.setdefault(index, {})
        if op == "delete":
            found = docs.pop(doc_id, None) is not None
            return {**head, "status": 200 if found else 404,
                    "result": "deleted" if found else "not_found"}
        if op not in ("index", "create"):
            return fail(400, "illegal_argument_exception", f"unsupported action [{op}]")
        if op == "create" and doc_id in docs:
            return fail(409, "version_conflict_engine_exception",
                        f"[{doc_id}]: version conflict, document already exists")
        mapping = self.mappings.setdefault(index, {})
        for field, value in source.items():
            kind = mapping.get(field)
            if kind is not None and not _fits(kind, value):
                preview = str(value)[:20]
                return fail(400, "document_parsing_exception",
                            f"[1:1] failed to parse field [{field}] of type [{kind}] in "
                            f"document with id '{doc_id}'. Preview of field's value: "
                            f"'{preview}'")
        for field, value in source.items():
            if value is not None and not isinstance(value, list):
                mapping.setdefault(field, _kind(value))
        updated = doc_id in docs
        docs[doc_id] = source if self.keep_sources else {}
        self.applied[doc_id] += 1
        self._seq += 1
        return {**head, "_version": self.applied[doc_id],
                "result": "updated" if updated else "created",
                "_shards": {"total": 1, "successful": 1, "failed": 0},
                "_seq_no": self._seq, "_primary_term": 1, "status": 200 if updated else 201}
