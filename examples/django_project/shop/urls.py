from django.urls import path

from . import views

urlpatterns = [
    path("healthz", views.healthz),
    path("orders/<int:order_id>", views.get_order),
    path("orders", views.create_order),
    path("report", views.report),
    path("slow-async", views.slow_async),
]
