"""The authz app under gunicorn with the analytics design chosen by ``BENCH_DESIGN``.

``gunicorn bench._wsgi:app`` with ``BENCH_DESIGN`` one of
``bench.compare.DESIGNS`` and ``BENCH_REDIS_URL`` / ``BENCH_COLLECTOR_YAML``
for the designs that need them. Each worker process builds its own design
on its first request (after gunicorn forked it), so designs with
background threads or a sender process start them in the worker, never in
the master. The decision (``decide``) and the record's fields are those
of ``examples/authz_app.py``, whose own module-level ``Analytics`` is never
used here (``examples/authz_app.py`` itself always records with ours).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from examples import authz_app as authz

_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "design": None}


def _design() -> Any:
    pid = os.getpid()
    if _state["pid"] != pid:
        with _lock:
            if _state["pid"] != pid:
                from bench.compare import make_design

                d = make_design(os.environ["BENCH_DESIGN"], {
                    "redis_url": os.environ.get("BENCH_REDIS_URL", ""),
                    "collector_yaml": os.environ.get("BENCH_COLLECTOR_YAML", ""),
                })
                d.start()
                atexit.register(d.stop)
                _state["design"] = d
                _state["pid"] = pid
    return _state["design"]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``examples/authz_app.py``'s app, recording through the selected design."""
    path = environ.get("PATH_INFO", "")
    if path == "/healthz":
        return _json(start_response, "200 OK", {"status": "ok"})
    if path != "/v1/authz" or environ.get("REQUEST_METHOD") != "POST":
        return _json(start_response, "404 Not Found", {"error": f"no route for {path}"})
    t0 = time.perf_counter_ns()
    request_id = environ.get("HTTP_X_REQUEST_ID") or str(uuid.uuid4())
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length > 0 else b""
        request = json.loads(raw or b"null")
        if not isinstance(request, dict):
            raise ValueError("the body must be a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        return _json(start_response, "400 Bad Request", {"error": f"bad request body: {exc}"})
    allowed, matched, deciders, conclusion = authz.decide(request)
    latency_us = (time.perf_counter_ns() - t0) // 1000
    subject = str(request.get("subject", ""))
    _design().record({
        "timestamp": time.time(),
        "username": subject.removeprefix("users:"),
        "effect": "allow" if allowed else "deny",
        "conclusion": conclusion,
        "request": raw.decode("utf-8", "replace"),
        "policies": authz._brief(matched),
        "deciders": authz._brief(deciders),
        "request_id": request_id,
        "latency_us": latency_us,
        "remote_addr": environ.get("REMOTE_ADDR", ""),
        "pid": os.getpid(),
        "server": authz.SERVER,
    })
    body: dict[str, Any] = {"allowed": allowed, "request_id": request_id}
    if not allowed:
        body.update(denied=True, reason=conclusion)
    return _json(start_response, "200 OK", body, [("X-Request-ID", request_id)])


def _json(start_response: Callable[..., Any], status: str, body: dict[str, Any],
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))), *(extra or [])])
    return [data]
