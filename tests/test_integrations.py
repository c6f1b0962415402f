"""The Django middleware in-process (the example project through Django's own
WSGIHandler and ASGIHandler), and packaging: each integration module imports
only its own framework; event-loop gunicorn workers are recognised.

WSGI and ASGI are in ``test_integrations_wsgi.py`` and ``_asgi.py``; the full
path under gunicorn in ``test_integrations_gunicorn.py``; the examples' own
tests use the pytest plugin's fixtures (``examples/test_examples.py``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests._middleware import (
    Ring,
    call_asgi,
    call_wsgi,
    environ,
    http_scope,
)

ROOT = Path(__file__).resolve().parent.parent


# -- Django ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def django_shop() -> Any:
    sys.path.insert(0, str(ROOT / "examples" / "django_project"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    import django

    django.setup()
    return django


def test_django_wsgi_and_asgi(django_shop: Any, ring: Ring,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    from collector.integrations import _recorder

    monkeypatch.setattr(_recorder, "_default", ring.analytics)  # the shared client, private here
    wsgi = WSGIHandler()
    call_wsgi(wsgi, environ("/orders/5", headers={"X-Request-ID": "d-1", "Host": "localhost"}))
    _, body = call_wsgi(wsgi, environ("/report", headers={"Host": "localhost"}))
    call_wsgi(wsgi, environ("/orders", "POST", b'{"items": [1, 2, 3]}',
                            headers={"Host": "localhost"}))
    call_wsgi(wsgi, environ("/nope", headers={"Host": "localhost"}))
    call_wsgi(wsgi, environ("/healthz", headers={"Host": "localhost"}))  # skipped by settings

    asgi = ASGIHandler()

    async def main() -> None:
        for path in ("/orders/6", "/slow-async", "/report"):
            await call_asgi(asgi, http_scope(path, headers={"Host": "localhost"}))

    asyncio.run(main())
    recs = ring.records()
    assert [(r["path"], r["route"], r["status"]) for r in recs] == [
        ("/orders/5", "/orders/<int:order_id>", 200),
        ("/report", "/report", 200),
        ("/orders", "/orders", 201),
        ("/nope", None, 404),
        ("/orders/6", "/orders/<int:order_id>", 200),
        ("/slow-async", "/slow-async", 200),
        ("/report", "/report", 200),
    ]
    w_order, w_report, w_post, _, a_order, a_slow, a_report = recs
    assert w_order["order_id"] == 5 and w_order["request_id"] == "d-1"
    assert w_report["response_bytes"] == len(body) == len("order_id,state\n") + sum(
        len(f"{i},shipped\n") for i in range(100))
    assert (w_post["request_bytes"], w_post["items"]) == (20, 3)
    assert a_order["order_id"] == 6 and a_slow["kind"] == "async"
    assert a_report["response_bytes"] == w_report["response_bytes"]
    assert all(r["user_id"] is None for r in recs)  # no auth app: no user loaded


# -- packaging ------------------------------------------------------------------
def test_each_module_imports_only_its_own_framework() -> None:
    frameworks = ("django", "flask", "starlette", "fastapi", "werkzeug")
    checks = {
        "collector.integrations": (),
        "collector.integrations.wsgi": (),
        "collector.integrations.asgi": (),
        "collector.integrations.flask": ("flask", "werkzeug"),
        "collector.integrations.django": ("django",),
    }
    for module, allowed in checks.items():
        code = (f"import sys, {module}; "
                f"print(sorted(m for m in {frameworks!r} if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout.strip()
        assert set(eval(out)) <= set(allowed), (module, out)


def test_event_loop_workers_are_recognised() -> None:
    from gunicorn.workers.ggevent import GeventWorker
    from gunicorn.workers.gthread import ThreadWorker
    from gunicorn.workers.sync import SyncWorker
    from uvicorn.workers import UvicornWorker

    from collector.gunicorn import event_loop_worker

    kinds = {cls.__name__: event_loop_worker(object.__new__(cls))
             for cls in (SyncWorker, ThreadWorker, GeventWorker, UvicornWorker)}
    assert kinds["SyncWorker"] is None and kinds["ThreadWorker"] is None
    assert kinds["GeventWorker"] and kinds["UvicornWorker"]
