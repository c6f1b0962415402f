"""gunicorn settings for the example Django project with collector's hooks.

    gunicorn -c examples/django_project/gunicorn.conf.py shop.wsgi     # WSGI: sync, gthread, gevent
    gunicorn -c examples/django_project/gunicorn.conf.py \\
        -k uvicorn.workers.UvicornWorker shop.asgi                     # ASGI

The project directory is put on ``sys.path`` (``pythonpath``), so this works
from anywhere.
"""

import os

from collector.gunicorn import install

pythonpath = os.path.dirname(os.path.abspath(__file__))
bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("EXAMPLE_WORKERS", "2"))
worker_class = "gthread"
threads = 4
max_requests = 10_000
max_requests_jitter = 1_000
accesslog = None

install(globals())  # collector
