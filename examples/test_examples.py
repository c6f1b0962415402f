"""Tests of the three examples in-process, asserting on what they recorded.

These are the tests a user writes: the app runs in the test process (its
framework's own test client), and the ``collected`` fixture of collector's
pytest plugin shows the records that went the whole real way (ring ->
collector-daemon -> Redis -> collector-pump -> file sink). Each request gets
its own ``X-Request-ID`` so records of other tests never match.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from collector.pytest_plugin import Collected

HERE = Path(__file__).resolve().parent


def rid() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def test_flask_example(collected: Collected) -> None:
    from examples.flask_app.app import app

    # A WSGI record is sent once the body was read to its end (or closed), as a
    # server does: read every response (.data, .json, get_data()) or close it.
    client = app.test_client()
    ids = [rid() for _ in range(4)]
    assert client.get("/orders/7", headers={"X-Request-ID": ids[0]}).json["order_id"] == 7
    with client.post("/orders", json={"items": ["a", "b"]},
                     headers={"X-Request-ID": ids[1]}) as resp:
        assert resp.status_code == 201
    assert client.get("/report?rows=5", headers={"X-Request-ID": ids[2]}).data.count(b"\n") == 6
    assert client.get("/nope", headers={"X-Request-ID": ids[3]}).get_data()
    assert client.get("/healthz").json == {"status": "ok"}  # skipped: no record
    got = {r["request_id"]: r for r in collected.wait_for(
        4, timeout_s=10, where=lambda r: r.get("request_id") in ids)}
    assert got[ids[0]]["route"] == "/orders/<int:order_id>" and got[ids[0]]["order_id"] == 7
    assert (got[ids[1]]["status"], got[ids[1]]["items"]) == (201, 2)
    assert got[ids[2]]["response_bytes"] == len("order_id,state\n") + sum(
        len(f"{i},shipped\n") for i in range(5))
    assert (got[ids[3]]["status"], got[ids[3]]["route"]) == (404, None)
    assert all(r["_id"] for r in got.values())  # the stable record id the sink got


def test_fastapi_example(collected: Collected) -> None:
    from fastapi.testclient import TestClient

    from examples.fastapi_app.app import app

    ids = [rid() for _ in range(5)]
    with TestClient(app) as client:
        assert client.get("/items/3", headers={"X-Request-ID": ids[0]}).status_code == 200
        assert client.get("/stock/9", headers={"X-Request-ID": ids[1]}).json()["count"] == 2
        assert client.post("/orders", json={"items": ["a"]},
                           headers={"X-Request-ID": ids[2]}).status_code == 201
        client.get("/report?rows=3&delay_ms=5", headers={"X-Request-ID": ids[3]})
        with client.websocket_connect("/ws/echo", headers={"X-Request-ID": ids[4]}) as ws:
            ws.send_text("ping")
            assert ws.receive_text() == "ping"
    got = {r["request_id"]: r for r in collected.wait_for(
        5, timeout_s=10, where=lambda r: r.get("request_id") in ids)}
    assert (got[ids[0]]["route"], got[ids[0]]["item_id"]) == ("/items/{item_id}", 3)
    assert got[ids[1]]["source"] == "warehouse"  # added from a sync endpoint's thread
    assert (got[ids[2]]["status"], got[ids[2]]["items"]) == (201, 1)
    assert got[ids[3]]["duration_us"] >= 15_000  # the stream, to its last chunk
    assert (got[ids[4]]["method"], got[ids[4]]["status"]) == ("WEBSOCKET", 101)


@pytest.fixture(scope="module")
def django_client() -> Any:
    sys.path.insert(0, str(HERE / "django_project"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    import django

    django.setup()
    from django.test import Client

    return Client()


def test_django_example(django_client: Any, collected: Collected) -> None:
    ids = [rid() for _ in range(3)]
    assert django_client.get("/orders/5", HTTP_X_REQUEST_ID=ids[0]).status_code == 200
    assert django_client.post("/orders", b'{"items": [1, 2]}', content_type="application/json",
                              HTTP_X_REQUEST_ID=ids[1]).status_code == 201
    assert django_client.get("/slow-async", HTTP_X_REQUEST_ID=ids[2]).content == b"done"
    got = {r["request_id"]: r for r in collected.wait_for(
        3, timeout_s=10, where=lambda r: r.get("request_id") in ids)}
    assert (got[ids[0]]["route"], got[ids[0]]["order_id"]) == ("/orders/<int:order_id>", 5)
    assert (got[ids[1]]["status"], got[ids[1]]["items"]) == (201, 2)
    assert got[ids[2]]["kind"] == "async"
