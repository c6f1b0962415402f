"""A minimal Flask app recording one analytics record per request.

The three lines it needs are marked ``# collector``. Run it::

    COLLECTOR_CONFIG=configs/collector.yaml \\
        gunicorn -c examples/flask_app/gunicorn.conf.py examples.flask_app.app:app

(and ``collector-daemon --config configs/collector.yaml`` beside it). Each
record carries the route template (``/orders/<int:order_id>``), status,
duration, sizes, client address and ``X-Request-ID``, plus what the views
add with ``add_fields``.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, request

from collector.integrations import add_fields  # collector
from collector.integrations.flask import instrument  # collector

app = Flask(__name__)
instrument(app, skip_paths=["/healthz"])  # collector


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/orders/<int:order_id>")
def get_order(order_id: int) -> dict[str, object]:
    add_fields(order_id=order_id)
    return {"order_id": order_id, "state": "shipped"}


@app.post("/orders")
def create_order() -> tuple[dict[str, object], int]:
    body = request.get_json(silent=True) or {}
    items = body.get("items") or []
    add_fields(items=len(items))
    return {"created": True, "items": len(items)}, 201


@app.get("/report")
def report() -> Response:
    """A streamed CSV: the record is timed to its last byte."""
    rows = int(request.args.get("rows", "100"))

    def lines() -> Iterator[str]:
        yield "order_id,state\n"
        for i in range(rows):
            yield f"{i},shipped\n"

    return Response(lines(), mimetype="text/csv")
