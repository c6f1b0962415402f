"""A minimal FastAPI app recording one analytics record per request and WebSocket.

The three lines it needs are marked ``# collector``. Run it::

    COLLECTOR_CONFIG=configs/collector.yaml \\
        gunicorn -c examples/fastapi_app/gunicorn.conf.py examples.fastapi_app.app:app

Records carry FastAPI's route template (``/items/{item_id}``); a streamed
response is timed to its last byte; ``/ws/echo`` records one record per
connection (method ``WEBSOCKET``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from collector.integrations import add_fields  # collector
from collector.integrations.asgi import AnalyticsMiddleware  # collector

app = FastAPI()
app.add_middleware(AnalyticsMiddleware, skip_paths=["/healthz"])  # collector


class Order(BaseModel):
    items: list[str] = []


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, object]:
    add_fields(item_id=item_id)
    return {"item_id": item_id, "state": "in stock"}


@app.get("/stock/{item_id}")
def get_stock(item_id: int) -> dict[str, object]:
    """A sync endpoint (run in a thread): ``add_fields`` works there too."""
    add_fields(item_id=item_id, source="warehouse")
    return {"item_id": item_id, "count": item_id % 7}


@app.post("/orders", status_code=201)
async def create_order(order: Order) -> dict[str, object]:
    add_fields(items=len(order.items))
    return {"created": True, "items": len(order.items)}


@app.get("/report")
async def report(rows: int = 100, delay_ms: float = 0) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        yield "item_id,state\n"
        for i in range(rows):
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            yield f"{i},in stock\n"

    return StreamingResponse(lines(), media_type="text/csv")


@app.websocket("/ws/echo")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(text)
    except WebSocketDisconnect:
        pass
