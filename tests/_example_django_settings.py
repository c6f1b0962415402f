"""The example shop's settings with ``/_test/stuck`` added (see ``tests._example_apps``)."""

from shop.settings import *  # noqa: F403

ROOT_URLCONF = "tests._example_django_urls"
