"""Flask: the WSGI middleware around ``app.wsgi_app``, plus the matched route template.

::

    from collector.integrations.flask import instrument
    app = Flask(__name__)
    instrument(app, skip_paths=["/healthz"])     # options: HttpRecordOptions

``route`` is the ``url_rule`` Flask matched (``"/orders/<int:order_id>"``),
``None`` for a 404: a ``before_request`` hook (the first) copies it into
``environ["collector.route"]``, since Flask's request context is gone by the
time the body has been sent. Imports Flask and nothing else of any framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask, request

from .wsgi import ROUTE_KEY, AnalyticsMiddleware

if TYPE_CHECKING:
    from .._client import Analytics

__all__ = ["instrument"]


def _note_route() -> None:
    req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    rule = req.url_rule
    if rule is not None:
        req.environ[ROUTE_KEY] = rule.rule


def instrument(app: Flask, analytics: Analytics | None = None,
               **options: Any) -> AnalyticsMiddleware:
    """Record every request of ``app``; returns the middleware (for ``stats()``).

    Without ``analytics`` the process's shared client
    (:func:`collector.integrations.default_analytics`) is made on the first
    request. The ``user_id`` hook and the record builder get the WSGI environ
    (Flask's request context is gone when they run): read what they need from
    it, or use ``add_fields`` in the view.
    """
    if "collector" in app.extensions:
        raise RuntimeError("instrument() was already called for this app: it would record "
                           "every request twice")
    middleware = AnalyticsMiddleware(app.wsgi_app, analytics, **options)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    # first, so a before_request hook that answers early (a 401) still has its route
    app.before_request_funcs.setdefault(None, []).insert(0, _note_route)
    app.extensions["collector"] = middleware
    return middleware
