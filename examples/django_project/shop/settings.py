"""Settings of the example Django project: no database, collector's middleware first.

The lines collector needs are marked ``# collector``.
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "collector.integrations.django.AnalyticsMiddleware",  # collector
    "django.middleware.common.CommonMiddleware",
]
COLLECTOR_HTTP = {"skip_paths": ["/healthz"]}  # collector (optional)
ROOT_URLCONF = "shop.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
WSGI_APPLICATION = "shop.wsgi.application"
ASGI_APPLICATION = "shop.asgi.application"
