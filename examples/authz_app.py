"""A small authorization server in the spirit of the seed's iam-authz-server.

``POST /v1/authz`` with JSON ``{"subject", "action", "resource", "context"}``
decides allow/deny against a few in-memory ladon-style policies and answers
``{"allowed": bool, ...}``; every decision is recorded with
``collector.Analytics.record_hit`` (one record per request). ``GET /healthz``
answers ``{"status": "ok"}``.

Policies follow ladon: ``subjects``, ``actions`` and ``resources`` are lists
of patterns where ``<...>`` encloses a regular expression
(``"resources:articles:<.*>"``); ``conditions`` test the request's
``context`` (``StringEqualCondition``, ``CIDRCondition``). A request is
allowed when at least one matching policy allows it and none denies it.

Run it (sync workers; the config comes from ``$COLLECTOR_CONFIG`` or the
defaults)::

    gunicorn -c examples/gunicorn.conf.py --preload examples.authz_app:app

The analytics record (~450 bytes of msgpack)::

    timestamp   float, seconds since the epoch
    username    the subject without its "users:" prefix
    effect      "allow" or "deny"
    conclusion  why, in words
    request     the request JSON (a string)
    policies    the policies that matched the request (a JSON string)
    deciders    the policies that decided it (a JSON string)
    request_id  the X-Request-ID header, or a new uuid4
    latency_us  decision time in microseconds
    remote_addr, pid, server
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from collector import Analytics

POLICIES: list[dict[str, Any]] = [
    {
        "id": "p-articles-read",
        "description": "Editors and readers may read and list articles.",
        "subjects": ["users:<alice|bob|carol>", "users:editor-<[0-9]+>"],
        "actions": ["<read|list>"],
        "resources": ["resources:articles:<.*>"],
        "effect": "allow",
    },
    {
        "id": "p-articles-write",
        "description": "Editors may write articles from the office network.",
        "subjects": ["users:editor-<[0-9]+>", "users:alice"],
        "actions": ["<create|update|delete>"],
        "resources": ["resources:articles:<.*>"],
        "effect": "allow",
        "conditions": {"remoteIP": {"type": "CIDRCondition",
                                    "options": {"cidr": "192.168.0.0/16"}}},
    },
    {
        "id": "p-secrets-deny",
        "description": "Nobody but the admin touches secrets.",
        "subjects": ["users:<(?!admin$).*>"],
        "actions": ["<.*>"],
        "resources": ["resources:secrets:<.*>"],
        "effect": "deny",
    },
    {
        "id": "p-admin",
        "description": "The admin may do anything from the admin console.",
        "subjects": ["users:admin"],
        "actions": ["<.*>"],
        "resources": ["<.*>"],
        "effect": "allow",
        "conditions": {"console": {"type": "StringEqualCondition",
                                   "options": {"equals": "admin"}}},
    },
]

SERVER = socket.gethostname()


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    """A ladon pattern: literal text with ``<regex>`` parts, matched whole."""
    out: list[str] = []
    pos = 0
    for m in re.finditer(r"<([^<>]*)>", pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(f"(?:{m.group(1)})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out))


def _matches(patterns: Iterable[str], value: str) -> bool:
    return any(_compile(p).fullmatch(value) for p in patterns)


def _condition_holds(cond: dict[str, Any], value: Any) -> bool:
    kind = cond.get("type")
    opts = cond.get("options", {})
    if kind == "StringEqualCondition":
        return isinstance(value, str) and value == opts.get("equals")
    if kind == "CIDRCondition":
        try:
            return ipaddress.ip_address(str(value)) in ipaddress.ip_network(opts["cidr"])
        except (ValueError, KeyError):
            return False
    return False  # an unknown condition never holds


def decide(request: dict[str, Any],
           policies: list[dict[str, Any]] = POLICIES) -> tuple[bool, list[dict[str, Any]],
                                                              list[dict[str, Any]], str]:
    """``(allowed, matched policies, deciding policies, conclusion)``."""
    subject = str(request.get("subject", ""))
    action = str(request.get("action", ""))
    resource = str(request.get("resource", ""))
    context = request.get("context") or {}
    matched = [
        p for p in policies
        if _matches(p["subjects"], subject) and _matches(p["actions"], action)
        and _matches(p["resources"], resource)
        and all(_condition_holds(c, context.get(k)) for k, c in p.get("conditions", {}).items())
    ]
    denies = [p for p in matched if p["effect"] == "deny"]
    if denies:
        return False, matched, denies, f"explicitly denied by policy {denies[0]['id']}"
    allows = [p for p in matched if p["effect"] == "allow"]
    if allows:
        return True, matched, allows, f"allowed by policy {allows[0]['id']}"
    return False, matched, [], "no policy allows this request"


def _brief(policies: list[dict[str, Any]]) -> str:
    return json.dumps([{"id": p["id"], "effect": p["effect"]} for p in policies],
                      separators=(",", ":"))


# $COLLECTOR_CONFIG names the YAML file shared with collector-daemon; without
# it the defaults (and any COLLECTOR_* variables) apply. The ring is opened by
# gunicorn's post_fork hook, or by the first record_hit.
analytics = Analytics.from_config()

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def _json(start_response: StartResponse, status: str, body: dict[str, Any],
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))), *(extra or [])])
    return [data]


def make_app(record: Callable[[dict[str, Any]], Any]) -> Callable[..., list[bytes]]:
    """The WSGI app, recording one analytics record per decision with ``record``."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        return _handle(environ, start_response, record)

    return app


def _handle(environ: dict[str, Any], start_response: StartResponse,
            record: Callable[[dict[str, Any]], Any]) -> list[bytes]:
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    if path == "/healthz" and method == "GET":
        return _json(start_response, "200 OK", {"status": "ok"})
    if path != "/v1/authz":
        return _json(start_response, "404 Not Found", {"error": f"no route for {path}"})
    if method != "POST":
        return _json(start_response, "405 Method Not Allowed", {"error": "use POST"},
                     [("Allow", "POST")])
    t0 = time.perf_counter_ns()
    request_id = environ.get("HTTP_X_REQUEST_ID") or str(uuid.uuid4())
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length > 0 else b""
        request = json.loads(raw or b"null")
        if not isinstance(request, dict):
            raise ValueError("the body must be a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        return _json(start_response, "400 Bad Request",
                     {"error": f"bad request body: {exc}", "request_id": request_id})
    allowed, matched, deciders, conclusion = decide(request)
    latency_us = (time.perf_counter_ns() - t0) // 1000
    subject = str(request.get("subject", ""))
    record({
        "timestamp": time.time(),
        "username": subject.removeprefix("users:"),
        "effect": "allow" if allowed else "deny",
        "conclusion": conclusion,
        "request": raw.decode("utf-8", "replace"),
        "policies": _brief(matched),
        "deciders": _brief(deciders),
        "request_id": request_id,
        "latency_us": latency_us,
        "remote_addr": environ.get("REMOTE_ADDR", ""),
        "pid": os.getpid(),
        "server": SERVER,
    })
    body: dict[str, Any] = {"allowed": allowed, "request_id": request_id}
    if not allowed:
        body.update(denied=True, reason=conclusion)
    return _json(start_response, "200 OK", body, [("X-Request-ID", request_id)])


app = make_app(lambda rec: analytics.record_hit(rec))
application = app
