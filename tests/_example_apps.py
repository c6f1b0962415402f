"""The examples' apps plus one test-only route, ``/_test/stuck``, for gunicorn's timeout.

``stuck_holding_the_gil()`` stands for a C extension stuck with the GIL held:
libc ``sleep()`` called through ``ctypes.PyDLL`` (which keeps the GIL), with
every signal blocked in that thread. Then no thread of the worker can run
Python: the worker stops notifying the arbiter, the arbiter's SIGABRT
(gunicorn's first, graceful step) cannot be handled, and the worker dies by
the arbiter's SIGKILL in the middle of that request, in every worker class
(gthread's main thread and uvicorn's event loop included). It uses no CPU.
On the main thread it also ignores SIGABRT: ``UvicornWorker`` resets it to
its default action, which would otherwise end the process at the first step
(delivered to any thread that does not block it), not by SIGKILL.

gunicorn targets (factories): ``tests._example_apps:flask_app()``, ``...:fastapi_app()``;
Django uses ``DJANGO_SETTINGS_MODULE=tests._example_django_settings`` with the
example's own ``shop.wsgi`` / ``shop.asgi``.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from functools import cache

STUCK_PATH = "/_test/stuck"


def stuck_holding_the_gil(marker: str | None, seconds: int = 120) -> None:
    """Record ``{"request_id": marker}`` with ``record_hit``, then get stuck (see module doc)."""
    if marker:
        from collector.integrations import default_analytics

        assert default_analytics().record_hit({"request_id": marker, "kind": "marker"})
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGABRT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    ctypes.PyDLL(None).sleep(seconds)


@cache
def flask_app() -> object:
    from flask import request

    from examples.flask_app.app import app

    def stuck() -> str:
        stuck_holding_the_gil(request.args.get("marker"))
        return "unreachable"

    app.add_url_rule(STUCK_PATH, "test_stuck", stuck)
    return app


@cache
def fastapi_app() -> object:
    from examples.fastapi_app.app import app

    async def stuck(marker: str | None = None) -> str:
        stuck_holding_the_gil(marker)
        return "unreachable"

    app.add_api_route(STUCK_PATH, stuck)
    return app

