from django.http import HttpRequest, HttpResponse
from django.urls import path
from shop.urls import urlpatterns as shop_urls

from ._example_apps import stuck_holding_the_gil


async def stuck(request: HttpRequest) -> HttpResponse:
    """Async, so that under ASGI it blocks the event loop's (main) thread."""
    stuck_holding_the_gil(request.GET.get("marker"))
    return HttpResponse("unreachable")


urlpatterns = [*shop_urls, path("_test/stuck", stuck)]
