"""gunicorn settings for examples/fastapi_app with collector's hooks.

    gunicorn -c examples/fastapi_app/gunicorn.conf.py examples.fastapi_app.app:app

``uvicorn.workers.UvicornWorker`` runs the ASGI app (one event loop per
worker). ``install`` gives every worker its own ring, closes it on exit, and
refuses ``full_policy: block`` here (it would stall the event loop).
"""

import os

from collector.gunicorn import install

bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("EXAMPLE_WORKERS", "2"))
worker_class = "uvicorn.workers.UvicornWorker"
max_requests = 10_000
max_requests_jitter = 1_000
accesslog = None

install(globals())  # collector
