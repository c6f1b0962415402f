"""The WSGI middleware in-process: what it records, its options, add_fields across
threads, never raising into the app, file_wrapper bodies, Flask's instrument().

Real parts as in ``tests/_middleware.py``: a real client's ring read back.
The full path (daemon, Redis, pump, sink) under gunicorn is in
``tests/test_integrations_gunicorn.py``.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.integrations import (
    ALL_FIELDS,
    DEFAULT_FIELDS,
    add_fields,
    current_fields,
)
from collector.integrations.wsgi import AnalyticsMiddleware as WSGIMiddleware
from collector.testing import in_threads
from tests._middleware import (
    Ring,
    call_wsgi,
    demo_wsgi,
    environ,
)


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
