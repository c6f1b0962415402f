"""gunicorn settings for examples/flask_app with collector's hooks.

    gunicorn -c examples/flask_app/gunicorn.conf.py examples.flask_app.app:app

Any WSGI worker class works (``-k sync``, ``-k gthread``, ``-k gevent``);
``install`` gives every worker its own ring and closes it when the worker
exits (also when recycled by ``max_requests``).
"""

import os

from collector.gunicorn import install

bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("EXAMPLE_WORKERS", "2"))
worker_class = "gthread"
threads = 4
max_requests = 10_000  # recycle workers now and then; their rings are drained, not lost
max_requests_jitter = 1_000
accesslog = None

install(globals())  # collector
