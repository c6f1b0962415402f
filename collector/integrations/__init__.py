"""Request middleware: one analytics record per request for the frameworks our users run.

=====================================  ==========================================
``collector.integrations.wsgi``        ``AnalyticsMiddleware(app)``: any WSGI app
``collector.integrations.flask``       ``instrument(app)``: the WSGI one + Flask's route
``collector.integrations.asgi``        ``AnalyticsMiddleware(app)``: Starlette, FastAPI,
                                       any ASGI app; HTTP and WebSocket
``collector.integrations.django``      ``"collector.integrations.django.AnalyticsMiddleware"``
                                       in ``MIDDLEWARE``; WSGI and ASGI
=====================================  ==========================================

Each framework module imports only its own framework (``wsgi`` and
``asgi`` import none); this package imports none. Frameworks are not
dependencies of ``collector``: install them with your app.

Shared here: :func:`add_fields` (fields for the current request's record,
from any thread, greenlet or asyncio task handling it),
:class:`HttpRecordOptions` (every option, documented there),
:data:`DEFAULT_FIELDS` (the record, documented in :mod:`._recorder`) and
:func:`default_analytics` (the process's shared client, made on first use).
Nothing here raises into the app: see :meth:`Recorder.stats` (``stats()``
on each middleware) for what was dropped or failed.
"""

from ._recorder import (
    ALL_FIELDS,
    DEFAULT_FIELDS,
    HttpRecordOptions,
    Recorder,
    add_fields,
    current_fields,
    default_analytics,
    refuse_block_policy,
    reset_default_analytics,
)

__all__ = [
    "ALL_FIELDS",
    "DEFAULT_FIELDS",
    "HttpRecordOptions",
    "Recorder",
    "add_fields",
    "current_fields",
    "default_analytics",
    "refuse_block_policy",
    "reset_default_analytics",
]
