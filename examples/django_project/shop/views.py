"""Views of the example shop: ``add_fields`` puts the order's fields into its record."""

import asyncio
import json
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from collector.integrations import add_fields


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def get_order(request: HttpRequest, order_id: int) -> JsonResponse:
    add_fields(order_id=order_id)
    return JsonResponse({"order_id": order_id, "state": "shipped"})


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    try:
        items = json.loads(request.body or b"{}").get("items") or []
    except ValueError:
        return JsonResponse({"error": "the body must be JSON"}, status=400)
    add_fields(items=len(items))
    return JsonResponse({"created": True, "items": len(items)}, status=201)


@require_GET
def report(request: HttpRequest) -> StreamingHttpResponse:
    """A streamed CSV: the record is timed to its last byte."""
    rows = int(request.GET.get("rows", "100"))

    def lines() -> Iterator[str]:
        yield "order_id,state\n"
        for i in range(rows):
            yield f"{i},shipped\n"

    return StreamingHttpResponse(lines(), content_type="text/csv")


async def slow_async(request: HttpRequest) -> HttpResponse:
    """An async view (served in the event loop under ASGI, in a thread under WSGI)."""
    await asyncio.sleep(float(request.GET.get("ms", "5")) / 1000)
    add_fields(kind="async")
    return HttpResponse("done")
