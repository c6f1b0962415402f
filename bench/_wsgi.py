"""The authz app under gunicorn with the analytics design chosen by ``BENCH_DESIGN``.

``gunicorn bench._wsgi:app`` with ``BENCH_DESIGN`` one of
``bench.compare.DESIGNS`` and ``BENCH_REDIS_URL`` / ``BENCH_COLLECTOR_YAML``
for the designs that need them. Each worker process builds its own design
on its first request (after gunicorn forked it), so designs with
background threads or a sender process start them in the worker, never in
the master. The decision (``decide``) and the record's fields are those
of ``examples/authz_app.py``, whose own module-level ``Analytics`` is never
used here (``examples/authz_app.py`` itself always records with ours).
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from examples import authz_app as authz

_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "design": None}


def _design() -> Any:
    pid = os.getpid()
    if _state["pid"] != pid:
        with _lock:
            if _state["pid"] != pid:
                from bench.compare import make_design

                d = make_design(os.environ["BENCH_DESIGN"], {
                    "redis_url": os.environ.get("BENCH_REDIS_URL", ""),
                    "collector_yaml": os.environ.get("BENCH_COLLECTOR_YAML", ""),
                })
                d.start()
                atexit.register(d.stop)
                _state["design"] = d
                _state["pid"] = pid
    return _state["design"]


# examples/authz_app.py's handler, recording through the selected design.
app = authz.make_app(lambda rec: _design().record(rec))
